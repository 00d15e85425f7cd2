"""Tests of `relay.cli`: the operator commands, `relay demo`, `relay listen`, `relay rekey`."""
