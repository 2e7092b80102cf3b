"""Thin click front ends: parse and validate every option, then call library functions."""
