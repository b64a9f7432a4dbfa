"""Voxwire beside other voice pipelines on the same machine and models (`make bench-peers`)."""
