"""pluggy markers for the ``tokencompress`` project name."""

import pluggy

PROJECT = "tokencompress"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
