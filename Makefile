# The two commands a fresh machine needs (each installs what it needs first):
#   make serve  - the main job: the built-in `tiny` model playing endlessly to the default audio
#                 device (the null output where there is none); type commands on stdin
#   make test   - the whole test suite (what CI runs)
.PHONY: serve test setup demo walk soak

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/musicgen-live serve --model tiny

demo: setup
	@mkdir -p out
	.venv/bin/musicgen-live render --model tiny --prompt "demo: random weights, this is noise" --seconds 10 --out out/tiny-demo.wav --codes-out out/tiny-demo.npy

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	bash scripts/typecheck.sh
	.venv/bin/python -m pytest -q

# the long profile of the random command walk (tests/streamer/test_walk.py): 10 000 commands across
# hundreds of window slides, ~20 min on 2 cores; WALK=N, SEED=S, MODEL=tiny-melody, BEAT=1 (changes
# held for a beat clock's beats), KV=float16, CODEC=int8 and PRECISION=int8 (the speed settings; int8
# with KV=float16 runs the compiled decoder step) to change it
walk: setup
	MUSICGEN_LIVE_WALK=$${WALK:-10000} MUSICGEN_LIVE_WALK_SEED=$${SEED:-1} MUSICGEN_LIVE_WALK_MODEL=$${MODEL:-tiny} \
		MUSICGEN_LIVE_WALK_BEAT=$${BEAT:-} MUSICGEN_LIVE_WALK_KV=$${KV:-} MUSICGEN_LIVE_WALK_CODEC=$${CODEC:-} \
		MUSICGEN_LIVE_WALK_PRECISION=$${PRECISION:-} \
		.venv/bin/python -m pytest -q -s \
		tests/streamer/test_walk.py -k long

# a long set against a real serve process (bridges/bench/soak.py): RSS every 30 s, growth after a 5-minute
# warm-up within 5 %, every request answered, no stall; MINUTES=60, MODEL=tiny, SCENARIO=rotation|random,
# BROWSER=1 (the page plays in headless Chromium too)
soak: setup
	.venv/bin/musicgen-live soak --minutes $${MINUTES:-60} --model $${MODEL:-tiny} --scenario $${SCENARIO:-rotation} \
		$${BROWSER:+--browser}
