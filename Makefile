# The two commands a fresh machine needs (each installs what it needs first):
#   make demo   - the main job: 10 s of the built-in `tiny` model rendered to out/tiny-demo.wav
#   make test   - the whole test suite
.PHONY: demo test setup

setup:
	@bash scripts/setup.sh

demo: setup
	@mkdir -p out
	.venv/bin/musicgen-live render --model tiny --prompt "demo: random weights, this is noise" --seconds 10 --out out/tiny-demo.wav --codes-out out/tiny-demo.npy

test: setup
	.venv/bin/python -m pytest -q
