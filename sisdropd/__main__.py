from sisdropd.cli import entry

entry()
