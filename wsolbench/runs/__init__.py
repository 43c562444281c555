"""Runs, reports and suites: the run directory, tables made from run directories, benchmark suites."""
