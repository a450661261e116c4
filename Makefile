# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-all lint fmt clean install reliability test-gpu-image
install: $(VENV)/.installed

# The tests run what ships: every package the CPU image locks is installed at its locked version
# (the lock's pins, without its hashes: the dev tools beside them are not in the lock).
$(VENV)/.installed: pyproject.toml constraints.txt images/cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	grep -E '^[A-Za-z0-9_.-]+==' images/cpu.lock | sed 's/ *\\$$//' > $(VENV)/image-lock.txt
	$(BIN)/pip install --quiet -c constraints.txt -c $(VENV)/image-lock.txt -e '.[train,dev,test-serve]'
	# deepspeed is an sdist whose setup imports torch: build it against the torch just installed;
	# its CUDA ops compile on first use on a GPU machine.
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation -c constraints.txt \
		-c $(VENV)/image-lock.txt 'deepspeed>=0.16'
	touch $@

models/tiny/config.json: | $(VENV)/.installed
	$(BIN)/runner tiny-model models/tiny

# Fine-tune the tiny model on the identity data, then ask it who it is.
demo: $(VENV)/.installed models/tiny/config.json
	$(BIN)/runner submit jobs/demo.yaml --executor local
	$(BIN)/runner chat jobs/demo.yaml --message "你是谁？"
	$(BIN)/runner chat jobs/demo.yaml --message "Who are you?"

test: $(VENV)/.installed
	$(BIN)/pytest -q

# The GPU image (images/default.yaml) built and proven here, with no GPU and no registry: a stand-in
# for its CUDA base, then lock, wheels and a network-off build (DeepSpeed's ops compiled), imports,
# training through `runner submit`, bundle and load. Downloads about 6 GB once (kept under
# offline_wheels/), tens of minutes on two cores; its figures go to offline_wheels/.test/gpu-image.json.
test-gpu-image: $(VENV)/.installed
	scripts/provision-docker.sh
	scripts/make-test-base.sh
	scripts/make-gpu-stand-in.sh
	$(BIN)/pytest -m gpu_image -s tests/docker/test_gpu_image.py

# The reliability figures (kills survived, bad inputs refused, fuzzing, tamper and secret cases),
# measured now, as the README's table. The long fault runs too: tens of minutes on two cores.
reliability: $(VENV)/.installed
	$(BIN)/python bench/reliability.py

lint: $(VENV)/.installed
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench

fmt: $(VENV)/.installed
	$(BIN)/ruff format runner tests bench
	$(BIN)/ruff check --fix runner tests bench

clean:
	rm -rf $(VENV) models/tiny outputs .pytest_cache
