# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The venv is (re)installed only when the pins or the install script change.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/shapes_world_small
WORK_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

.PHONY: install demo app test lint lock clean-venv

$(STAMP): requirements/constraints.txt requirements/excludes.txt requirements/overrides.txt requirements/tools.txt setup.cfg tools/setup/install.sh tools/setup/selfcheck.py
	bash tools/setup/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo/mammut_shapes.py --data-root $(DATA) --work-dir $(WORK_DIR)

# The web demo (tools/demo/app.py) on Shapes World models: the FIBER detector and the MaMMUT video model are
# trained the first time (detector: its 24 epochs; video: 12 of 40; up to 2 hours on 2 cores), then served at
# http://127.0.0.1:7860/ (APP_ARGS for more flags, e.g. APP_ARGS='--port 8000').
APP_DIR ?= work_dirs/app
APP_DET_CONFIG := configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py
APP_VIDEO_CONFIG := configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py
APP_DET_EPOCHS ?= 24
APP_VIDEO_EPOCHS ?= 12
APP_DET_CKPT := $(APP_DIR)/det/epoch_$(APP_DET_EPOCHS).pth
APP_VIDEO_CKPT := $(APP_DIR)/video/epoch_$(APP_VIDEO_EPOCHS).pth
APP_ARGS ?=
# A shorter schedule: the cosine decay (param_scheduler[1]) ends with it; validation and a checkpoint at the end.
short_schedule = train_cfg.max_epochs=$(1) train_cfg.val_interval=$(1) param_scheduler.1.end=$(1) \
	default_hooks.checkpoint.interval=$(1)

data/shapes_world_small/.complete: | $(STAMP)
	$(PY) tools/data/make_shapes_world.py --out data/shapes_world_small --seed 0 --size small

$(APP_DET_CKPT): | data/shapes_world_small/.complete
	$(PY) tools/train.py $(APP_DET_CONFIG) --work-dir $(APP_DIR)/det --cfg-options $(call short_schedule,$(APP_DET_EPOCHS))

$(APP_VIDEO_CKPT): | data/shapes_world_small/.complete
	$(PY) tools/train.py $(APP_VIDEO_CONFIG) --work-dir $(APP_DIR)/video \
		--cfg-options $(call short_schedule,$(APP_VIDEO_EPOCHS))

app: $(STAMP) $(APP_DET_CKPT) $(APP_VIDEO_CKPT)
	$(PY) tools/demo/app.py --det-config $(APP_DET_CONFIG) --det-checkpoint $(APP_DET_CKPT) \
		--video-config $(APP_VIDEO_CONFIG) --video-checkpoint $(APP_VIDEO_CKPT) $(APP_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy toolkit && $(VENV)/bin/lint-imports

# Re-pin after changing dependencies in setup.cfg (writes requirements/constraints.txt).
lock: $(STAMP)
	bash tools/setup/lock.sh

clean-venv:
	rm -rf $(VENV)
