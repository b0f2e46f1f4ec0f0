# make bfcl: .venv-bfcl, a venv apart from .venv with BFCL's own runner (`bfcl generate`,
# `bfcl evaluate`), to score a ttpa-ray endpoint the way the leaderboard does
# (docs/ecosystem.md, "BFCL's own runner"; tests/eval/test_bfcl_runner.py). Apart because
# bfcl-eval's pins (numpy==1.26.4, tree_sitter==0.21.3, ...) conflict with ours. Included by
# the Makefile (BFCL_VERSION is there).
BFCL_VENV ?= .venv-bfcl
BFCL_PY := $(BFCL_VENV)/bin/python
BFCL_STAMP := $(BFCL_VENV)/.bfcl-installed
# bfcl-eval's requirements as its METADATA lists them, less what no category we can run
# imports: sentence-transformers and faiss-cpu back only memory_vector (and would pull a CUDA
# torch, GBs); beautifulsoup4, html2text and google-search-results only web_search (SerpAPI,
# online); networkx and huggingface_hub nothing. Every other one is imported when `bfcl`
# starts (its model table imports every vendor's handler).
# qwen-agent 0.0.34 imports soundfile at import time without requiring it: 0.0.33 does not.
BFCL_REQUIREMENTS := \
	"requests" "tqdm" "numpy==1.26.4" "pandas" "pydantic>=2.8.2" "python-dotenv>=1.0.1" \
	"tree_sitter==0.21.3" "tree-sitter-java==0.21.0" "tree-sitter-javascript==0.21.4" \
	"openai>=1.86.0" "mistralai==1.7.0" "anthropic>=0.75.0" "cohere==5.18.0" \
	"typer>=0.12.5" "tabulate>=0.9.0" "datamodel-code-generator==0.25.7" \
	"google-genai>=1.52.0" "qwen-agent==0.0.33" "mpmath==1.3.0" "tenacity>=8.5.0" \
	"writer-sdk>=2.1.0" "overrides" "boto3" "rank_bm25==0.2.2" "filelock==3.20.0"

.PHONY: bfcl clean-bfcl

bfcl: $(BFCL_STAMP)

$(BFCL_STAMP): Makefile mk/bfcl.mk
	test -x $(BFCL_PY) || $(PYTHON) -m venv $(BFCL_VENV)
	echo '*' > $(BFCL_VENV)/.gitignore
	$(BFCL_PY) -m pip install -q --upgrade "pip>=24"
	$(BFCL_PY) -m pip install -q --no-deps "bfcl-eval==$(BFCL_VERSION)"
	# pip then lists the requirements left out above as "conflicts": expected, not an error.
	$(BFCL_PY) -m pip install -q $(BFCL_REQUIREMENTS)
	# No torch may creep in (a CPU-only machine would download a CUDA build).
	$(BFCL_PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
	# Imports everything `bfcl generate` / `bfcl evaluate` import; BFCL writes result/ and
	# score/ under BFCL_PROJECT_ROOT as soon as it is imported, hence the scratch root.
	root=$$(mktemp -d) && BFCL_PROJECT_ROOT=$$root $(BFCL_VENV)/bin/bfcl models \
		| grep -q "openbmb/MiniCPM-SALA-FC"; rc=$$?; rm -rf "$$root"; exit $$rc
	touch $(BFCL_STAMP)

clean-bfcl:
	rm -rf $(BFCL_VENV)
