"""Every measurement in one place: each `musicgen-live bench-*` command (and `soak`) runs one of
these modules and prints its report (BENCHMARKS.md records the commands and their figures).

They sit in the top layer because they drive all three: generation, matrices, step, codec and
quality measure the engine; stream and quantize a live session; bridge_latency, hostile, midi,
page and soak the bridges and a real `serve`; cluster the Ray Serve application. Nothing outside
this package and the command line imports them.
"""
