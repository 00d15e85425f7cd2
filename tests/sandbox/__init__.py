"""Tests of the Dext sandbox."""
