"""The ``maskjobs`` command line: thin Typer commands over the library.

:mod:`jobs.cli.main` builds the application from the command modules beside it;
:mod:`jobs.cli.options` holds what they share.
"""
