"""A faithful Canvas SIS Import API simulator over real HTTP (``sisdropd fake-canvas``).

It behaves as ../shared/reference/canvas-sis-api.md says Canvas does, by default. The parts,
one concern each (the facade imports them; none imports the facade):

- :mod:`.facade` -- :class:`FakeCanvas`, the object tests start, steer and stop;
- :mod:`.context` -- the explicit state the HTTP side works on (knobs, tokens, faults, log);
- :mod:`.http` -- the server and the Api answering each request (auth, accounts, faults);
- :mod:`.endpoints` -- Canvas's SIS Import endpoints; :mod:`.control` -- the ``/_sim/`` knobs;
- :mod:`.wire` -- request and reply records, Canvas's canned error bodies;
- :mod:`.upload` -- streamed request bodies and multipart;
- :mod:`.store` -- the batches, their files and JSON;
- :mod:`.runner` -- the time-driven job that moves batches along, one at a time;
- :mod:`.content` -- reading an upload as Canvas's CSV importer does;
- :mod:`.model` -- the records and JSON pieces they share;
- :mod:`.command` -- ``main``, the command line.
"""

from sisdropd.simulator.command import main
from sisdropd.simulator.context import FAULTS
from sisdropd.simulator.facade import FakeCanvas

__all__ = ["FAULTS", "FakeCanvas", "main"]
