# Shortcuts; each target is exactly a command from the README.
.PHONY: demo quick sweep readme test notebooks lab browser-check bench

demo:      ## the main job: SPO vs GRPO, each at its tuned lr, 3 seeds, <= 15 min on 2 CPU cores
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m spo_lab.experiment

sweep:     ## the learning-rate sweep behind the main job's settings (validation split)
	.venv/bin/python -m spo_lab.experiment --sweep

readme:    ## rewrite the README's result tables from results/tiny*/summary.json
	.venv/bin/python scripts/update_readme.py

quick:     ## smoke version of the main job
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m spo_lab.experiment --quick

test:      ## unit tests + every notebook under nbval (ci profile)
	python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest

notebooks: ## re-execute every notebook in place with the default profile (stored outputs); 12 in TRL's venv
	.venv/bin/python scripts/run_notebooks.py $(filter-out notebooks/12_trl.ipynb,$(sort $(wildcard notebooks/*.ipynb)))
	test -x .venv-trl/bin/python || bash scripts/ci_trl.sh
	.venv-trl/bin/python scripts/run_notebooks.py notebooks/12_trl.ipynb

lab:       ## install what every notebook needs and open them in JupyterLab
	python3 -m venv .venv && .venv/bin/pip install -e ".[notebooks]" && .venv/bin/jupyter lab notebooks

browser-check: ## every notebook run through JupyterLab in headless Chromium (ci profile); see the script for needs
	.venv/bin/python scripts/check_notebooks_in_browser.py

bench:     ## tracker + sampler speed at 10 million prompts
	.venv/bin/python benchmarks/bench_tracker.py
