# The two commands: `make demo` (fresh machine -> optimized bundled model) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-all bench clean venv

venv: $(STAMP)

# requirements.lock pins every dependency (torch==2.13.0 CPU); -c keeps pip from ever upgrading torch.
$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock -c requirements.lock
	# onnx2torch declares torchvision (which would replace torch with a CUDA build); it needs it only for NMS/RoiAlign.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The bundled example: 1000 shuffled Speech Commands rows; calibrate on 0-499, judge on 500-999.
# --goal size: on ONNX Runtime's CPU kernels int8 DS-CNN is not reliably faster than fp32 (measured;
# see report.html), and the latency goal never picks a slower model, so the demo asks for the smallest.
demo: venv
	$(BIN)/edgeopt profile examples/kws/dscnn_kws12.onnx --data examples/kws/speech_commands_mfcc_1000.npz --metric top1
	$(BIN)/edgeopt bench examples/kws/dscnn_kws12.onnx
	$(BIN)/edgeopt optimize examples/kws/dscnn_kws12.onnx --data examples/kws/speech_commands_mfcc_1000.npz \
		--metric top1 --max-drop 0.5pt --split calib=0:500,eval=500: --goal size --out demo-out

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: venv
	$(BIN)/python benchmarks/spine_models.py
	$(BIN)/python benchmarks/ptq_vs_peers.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
