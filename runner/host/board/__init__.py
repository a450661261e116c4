"""`runner board`: a web page for the team's runs that needs no internet. It reads the run
directories as the command line does, acts through the command line's own code, and serves every
script, style and font it uses from this package."""

from runner.host.board.access import Access, AccessError
from runner.host.board.server import Board, serve

__all__ = ["Access", "AccessError", "Board", "serve"]
