"""The whole TTPA run as one stage graph (`ttpa-ray pipeline --config FILE --run-dir DIR`).

    construct → model (tiny, when asked) → sft → sample (TPS, both modes + ESM)
      → ttpa (token-level DPO on TPS pairs) → dpo_response (baseline: gold vs a sampled
      response, no ESM, no token mask) → grpo (online GRPO from SFT with ESM as the
      reward; only with `pipeline.grpo_enabled`) → eval (each model served on Ray Serve,
      queried over HTTP) → report

Each stage writes under `RUN_DIR/<stage>/` and is recorded in `RUN_DIR/pipeline.json`
with a key: the hash of its own settings and the keys of the stages it reads. A re-run
skips a finished stage whose key is unchanged (and whose outputs exist); `--from STAGE`
re-runs that stage and everything after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ttpa_ray.atomic import read_json, write_json_atomic
from ttpa_ray.cluster.head import free_ports
from ttpa_ray.cluster.nodes import NODES_FILE, NodeTimeline
from ttpa_ray.config import Config, TrainConfig, apply_overrides
from ttpa_ray.schema.io import config_hash, read_rows, write_rows
from ttpa_ray.storage import StagedRun, is_uri, local_path

# grpo (opt-in) before eval, not right after sft: `--from grpo` re-runs no TPS nor DPO
STAGES = ("construct", "model", "sft", "sample", "ttpa", "dpo_response", "grpo", "eval", "report")
DEPENDS = {
    "construct": (),
    "model": ("construct",),
    "sft": ("construct", "model"),
    "sample": ("construct", "sft"),
    "ttpa": ("sample", "sft"),
    "dpo_response": ("sample", "sft", "construct"),
    "grpo": ("construct", "sft"),
    "eval": ("construct", "sft", "ttpa", "dpo_response", "grpo"),
    "report": ("eval",),
}
MODELS = ("sft", "dpo_response", "ttpa", "grpo")  # evaluated when their stage is in the run


def _read_state(path: Path) -> dict[str, Any]:
    """A run's `pipeline.json`. Unlike a shard marker it cannot be redone behind the user's
    back (it is what says which stages are finished), so an unreadable one stops the run
    with a ValueError naming it."""
    try:
        state: dict[str, Any] = read_json(path)
    except ValueError as e:
        raise ValueError(
            f"{e}; it records the run's finished stages: restore it from a copy, or delete "
            "it to run every stage again"
        ) from None
    return state


class Pipeline:
    """One run dir, one config; `run()` executes the stages that are not up to date."""

    def __init__(self, cfg: Config, run_dir: str | Path, progress: bool = True) -> None:
        self.cfg = cfg
        # A URI run dir (s3://, gs://) is mirrored locally; each finished stage is pushed.
        self.store = StagedRun(str(run_dir)) if is_uri(run_dir) else None
        if self.store is not None:
            self.store.pull(())  # the state; stage outputs come when a stage reads them
        self.run = self.store.local if self.store is not None else Path(run_dir)
        self.progress = progress
        self.timeline: NodeTimeline | None = None  # set by run_pipeline
        self.state_path = self.run / "pipeline.json"
        self.state: dict[str, Any] = {"stages": {}}
        if self.state_path.exists():
            saved = _read_state(self.state_path)
            # on disk: a list in stage order (what the report reads); here: by name
            # a file without `stages` (an early version's) records no finished stage
            self.state["stages"] = {
                s["name"]: {k: v for k, v in s.items() if k != "name"}
                for s in saved.get("stages", [])
            }
        self.keys: dict[str, str] = {}
        # this run's graph: STAGES less the opt-in stages switched off, so a run without
        # them has the stages, dependencies and keys it had before they existed
        self.opt_in = {"grpo": cfg.pipeline.grpo_enabled}
        self.stages = tuple(s for s in STAGES if self.opt_in.get(s, True))
        # the models the eval stage serves and scores (a benchmark's ablation: fewer)
        self.eval_models = tuple(m for m in MODELS if m in self.stages)

    # -- bookkeeping -----------------------------------------------------------------------

    def settings(self, stage: str) -> Any:
        c, p = self.cfg, self.cfg.pipeline
        no_grpo = {"grpo"}  # it steers only the grpo stage: other keys stay as they were
        return {
            "construct": c.construct.model_dump(mode="json"),
            "model": {"model": p.model, "tiny": _tiny_key(p.tiny)},
            "sft": self.train_cfg("sft").model_dump(mode="json", exclude=no_grpo),
            "sample": c.sample.model_dump(mode="json", exclude={"policy"}),
            "ttpa": self.train_cfg("ttpa").model_dump(mode="json", exclude=no_grpo),
            "dpo_response": self.train_cfg("dpo_response").model_dump(mode="json", exclude=no_grpo),
            "grpo": self.train_cfg("grpo").model_dump(mode="json"),
            "eval": {
                "models": list(self.eval_models),
                "suites": p.eval_suites,
                "limit": p.eval_limit,
                "max_tokens": p.eval_max_tokens,
                "serve": c.serve.model_dump(),
            },
            "report": {},
        }[stage]

    def key(self, stage: str) -> str:
        """`stage`'s resume key: `config_hash` (as for shard keys, `ttpa_ray.runner`) of its
        settings and its inputs' keys, so a changed upstream stage re-runs this one."""
        if stage not in self.keys:
            deps = {d: self.key(d) for d in self.depends(stage)}
            self.keys[stage] = config_hash({"settings": self.settings(stage), "deps": deps})
        return self.keys[stage]

    def done(self, stage: str) -> bool:
        rec = self.state["stages"].get(stage) or {}
        return rec.get("status") == "done" and rec.get("key") == self.key(stage)

    def depends(self, stage: str) -> tuple[str, ...]:
        """The stages `stage` reads (`DEPENDS`), of those this run has."""
        return tuple(d for d in DEPENDS[stage] if d in self.stages)

    def adopt(self, stage: str, source: Path, link: bool = True) -> None:
        """Mark `stage` done with the outputs of another run dir's same stage (linked, or
        copied when `link` is false so they can be edited), under this run's key. For
        benchmarks that share a stage between runs (one SFT start, several seeds after)."""
        import shutil

        dst, src = self.run / stage, Path(source).resolve() / stage
        if not src.is_dir():
            raise FileNotFoundError(f"adopt {stage}: {src} does not exist")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            dst.symlink_to(src, target_is_directory=True)
        else:
            shutil.copytree(src, dst, symlinks=True)
        prev = _read_state(src.parent / "pipeline.json")["stages"]
        rec: dict[str, Any] = next((s for s in prev if s["name"] == stage), {})
        self.state["stages"][stage] = {
            **{k: v for k, v in rec.items() if k != "name"},
            "status": "done",
            "key": self.key(stage),
            "adopted_from": str(src.parent),
        }
        self._save()

    def _save(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        stages = [
            {"name": s, **self.state["stages"][s]} for s in STAGES if s in self.state["stages"]
        ]
        out = {"stages": stages, "config": self.cfg.model_dump(mode="json")}
        write_json_atomic(self.state_path, out, indent=2, default=str)
        self.state["stages"] = {
            s["name"]: {k: v for k, v in s.items() if k != "name"} for s in stages
        }

    def inputs(self, stage: str) -> tuple[str, ...]:
        """The stages whose outputs `stage` reads (the report reads them all)."""
        return self.stages[: self.stages.index(stage)] if stage == "report" else self.depends(stage)

    def shared(self, rel: str) -> str:
        """Where workers on any node read `rel`: the URI in a URI run dir, else the path."""
        return self.store.remote(rel) if self.store is not None else str(self.run / rel)

    def train_cfg(self, which: str) -> TrainConfig:
        """The `train` section with the pipeline's per-run overrides (`Config.train_for`)."""
        return self.cfg.train_for(which)

    # -- running ---------------------------------------------------------------------------

    def run_all(self, start: str | None = None, stop_after: str | None = None) -> dict[str, Any]:
        """Run every stage that is not up to date (all from `start` on); returns the state."""
        for name in (start, stop_after):
            self.check_stage(name)
        forced = set(self.stages[self.stages.index(start) :]) if start else set()
        t_run = time.perf_counter()
        for i, stage in enumerate(self.stages):
            label = f"[{i + 1}/{len(self.stages)}] {stage}"
            if stage not in forced and self.done(stage):
                print(f"{label}: up to date, skipped", flush=True)
                self.state["stages"][stage]["status_this_run"] = "skipped"
                self._save()
                if stage == stop_after:
                    break
                continue
            eta = self._eta(stage)
            print(
                f"{label}: running{eta} (run time so far {time.perf_counter() - t_run:.0f}s)",
                flush=True,
            )
            self._fresh(stage)
            t0, started = time.perf_counter(), round(time.time(), 3)
            if self.timeline is not None:
                self.timeline.set_stage(stage)
            self.state["stages"][stage] = {
                "status": "running",
                "key": self.key(stage),
                "started_at": started,
            }
            self._save()
            try:
                if self.store is not None:
                    self.store.pull(self.inputs(stage))
                counts = self._stage_fn(stage)()
            except BaseException:
                self.state["stages"][stage]["status"] = "failed"
                self.state["stages"][stage]["seconds"] = round(time.perf_counter() - t0, 2)
                self._save()
                if self.store is not None:
                    self.store.push()
                raise
            finally:
                if self.timeline is not None:
                    self.timeline.set_stage("")
            seconds = round(time.perf_counter() - t0, 2)
            self.state["stages"][stage] = {
                "status": "done",
                "key": self.key(stage),
                "seconds": seconds,
                "started_at": started,
                "ended_at": round(time.time(), 3),
                "status_this_run": "ran",
                **(counts or {}),
            }
            self._save()
            if self.store is not None:
                self.store.push(stage)
            print(f"{label}: done in {seconds:.1f}s {self._counts_text(counts)}", flush=True)
            if stage == stop_after:
                break
        return self.state

    def check_stage(self, name: str | None) -> None:
        """A ValueError unless `name` (when given) is a stage of this run."""
        if name is None or name in self.stages:
            return
        if name in self.opt_in:
            raise ValueError(f"stage {name!r} is off: set pipeline.{name}_enabled: true")
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(self.stages)}")

    def _fresh(self, stage: str) -> None:
        """Empty a stage's dir when it last ran under another key (changed settings or
        inputs): its shards and checkpoints belong to that run, and Ray Train would resume
        from them. A stage that failed or was stopped under the same key keeps them and
        resumes."""
        import shutil

        rec = self.state["stages"].get(stage) or {}
        path = self.run / stage
        if (
            rec.get("key") not in (None, self.key(stage))
            and path.is_dir()
            and not path.is_symlink()
        ):
            shutil.rmtree(path)

    def _eta(self, stage: str) -> str:
        prev = (self.state["stages"].get(stage) or {}).get("seconds")
        return f" (last time {prev:.0f}s)" if prev else ""

    @staticmethod
    def _counts_text(counts: dict[str, Any] | None) -> str:
        if not counts or counts.get("rows_in") is None:
            return ""
        return (
            f"rows_in={counts['rows_in']} rows_out={counts['rows_out']} "
            f"quarantined={counts['rows_quarantined']}"
        )

    def _stage_fn(self, stage: str) -> Callable[[], dict[str, Any] | None]:
        return getattr(self, f"_{stage}")

    # -- stages ----------------------------------------------------------------------------

    @staticmethod
    def _totals(manifest: dict[str, Any], name: str) -> dict[str, Any]:
        total = next((s for s in manifest.get("stages", []) if s["stage"] == name), None)
        if total is None:
            return {}
        return {k: total[k] for k in ("rows_in", "rows_out", "rows_quarantined")}

    def _construct(self) -> dict[str, Any]:
        from ttpa_ray.construct.stage import run_construct

        m = run_construct(self.cfg.construct, self.run / "construct", progress=self.progress)
        return self._totals(m, "construct")

    def model_dir(self) -> Path:
        """The base model on the driver (a URI checkpoint is downloaded once)."""
        p = self.cfg.pipeline
        return self.run / "model" if p.model == "tiny" else Path(local_path(p.model))

    def model_shared(self) -> str:
        p = self.cfg.pipeline
        return self.shared("model") if p.model == "tiny" else p.model

    def _model(self) -> dict[str, Any]:
        p = self.cfg.pipeline
        if p.model != "tiny":
            if not is_uri(p.model) and not Path(p.model).is_dir():
                raise FileNotFoundError(f"pipeline.model: model directory {p.model} does not exist")
            return {}
        from ttpa_ray.tools.catalog import catalog_tools
        from ttpa_ray.train.tiny import catalog_texts, create_tiny_model_dir

        tools = [t.to_openai() for t in catalog_tools(self.cfg.construct.catalog)]
        create_tiny_model_dir(
            catalog_texts(tools, template=p.tiny.template),
            self.run / "model",
            p.tiny,
        )
        return {}

    def _train(
        self, mode: str, which: str, data: Path, model: Path, model_shared: str
    ) -> dict[str, Any]:
        from ttpa_ray.train.trainer import run_training

        sync = None
        if self.store is not None:
            from ttpa_ray.train.loop import SYNCED

            sync = self.shared(which)
            self.store.written[which] = set(SYNCED)  # rank 0 uploads them itself
        m = run_training(
            mode,
            self.train_cfg(which),
            data,
            model,
            self.run / which,
            sync_uri=sync,
            model_uri=model_shared if sync else None,
        )
        return self._totals(m, f"train.{mode}.examples") | {"steps": m["steps"]}

    def _sft(self) -> dict[str, Any]:
        counts = self._train(
            "sft", "sft", self.run / "construct", self.model_dir(), self.model_shared()
        )
        self._card_prompt_lengths()
        return counts

    def _card_prompt_lengths(self) -> None:
        """The SFT prompt lengths (the policy's tokens) in the construction card: only now
        is the tokenizer known. The same prompts go to TPS and eval."""
        from ttpa_ray.construct.dataset import set_card_section

        m = json.loads((self.run / "sft" / "manifest.json").read_text())
        stats, cfg = m.get("prompt_tokens") or {}, self.train_cfg("sft")
        if not stats:
            return
        row = " | ".join(str(stats[k]) for k in ("n", "min", "p50", "p90", "p99", "max"))
        set_card_section(
            self.run / "construct" / "card.md",
            "prompt-lengths",
            "\n".join(
                [
                    "## Prompt lengths (policy tokens, SFT turns)",
                    "",
                    f"Tool-call turns as SFT, TPS and eval see them: {cfg.distractors} "
                    f"distractor tool(s), first {cfg.max_turns_per_episode} turns per episode; "
                    f"{m.get('fitted', 0)} prompt(s) omit old tool results to fit "
                    f"max_prompt_tokens {cfg.max_prompt_tokens} or max_len {cfg.max_len}; "
                    "too long even so: see `sft/quarantine.parquet`.",
                    "",
                    "| turns | min | p50 | p90 | p99 | max |",
                    "|---|---|---|---|---|---|",
                    f"| {row} |",
                ]
            ),
        )

    def _sample(self) -> dict[str, Any]:
        from ttpa_ray.sample.stage import run_sample

        if self.store is not None and self.cfg.sample.engine == "vllm":
            raise ValueError(
                "sample.engine vllm loads the policy by path: put the run dir on a shared "
                f"filesystem (NFS) mounted on every node, not {self.store.uri}"
            )
        cfg = apply_overrides(self.cfg.sample, {"policy": self.shared("sft/model")}, "sample")
        m = run_sample(cfg, self.run / "construct", self.run / "sample", progress=self.progress)
        return self._totals(m, "sample.turns") | {"pairs": m["pairs"]}

    def _ttpa(self) -> dict[str, Any]:
        sft = self.run / "sft" / "model"
        return self._train("dpo", "ttpa", self.run / "sample", sft, self.shared("sft/model"))

    def _dpo_response(self) -> dict[str, Any]:
        """The response-level DPO baseline on the same turns: chosen = the gold answer,
        rejected = one sampled full response (n_sample) of the turn that is worse than gold
        (`sample.pairs.response_pairs`); no ESM weights or thresholds, no token-level mask
        (`train.dpo.token_level` off in its overrides)."""
        pairs = build_response_pairs(self.run / "sample", self.run / "construct", self.cfg)
        if not pairs:
            raise ValueError("dpo_response: TPS sampled no response worse than gold")
        from ttpa_ray.schema.records import PAIR_SCHEMA

        path = self.run / "dpo_response" / "pairs" / "pairs.parquet"
        write_rows(path, pairs, PAIR_SCHEMA)
        sft = self.run / "sft" / "model"
        return self._train("dpo", "dpo_response", path.parent, sft, self.shared("sft/model"))

    def _grpo(self) -> dict[str, Any]:
        """Online GRPO (`train.grpo`, `pipeline.grpo` overrides) on the construct's training
        turns, from the SFT model, its reference for the KL term."""
        sft = self.run / "sft" / "model"
        return self._train("grpo", "grpo", self.run / "construct", sft, self.shared("sft/model"))

    def _eval(self) -> dict[str, Any]:
        from ray import serve

        from ttpa_ray.eval import run_eval, sft_warning, summarize
        from ttpa_ray.sample.stage import prompt_fit
        from ttpa_ray.serve.deploy import deploy, start_proxy

        p, sc = self.cfg.pipeline, self.cfg.serve
        port = sc.port or free_ports(1, sc.host)[0]
        # Serve runs for this stage only, on loopback unless configured otherwise
        # HeadOnly: the eval clients run on the driver; proxies on other nodes would
        # only compete for the port (and all nodes are 127.0.0.1 on a test cluster)
        start_proxy(sc.host, port, proxy_location="HeadOnly")
        root = self.run / "eval"
        # the prompt budget of SFT and TPS, so eval requests are the prompts they saw
        sft = {"policy": str(self.run / "sft" / "model")}
        fit = prompt_fit(apply_overrides(self.cfg.sample, sft, "sample"))
        try:
            # One model at a time: each replica gets the configured CPUs/GPUs without
            # three replicas competing for (or waiting on) a small machine.
            for name in self.eval_models:
                model = {"model": self.shared(f"{name}/model"), "model_id": name, "port": port}
                cfg = apply_overrides(sc, model, "serve")
                url = deploy(cfg, name=f"eval-{name}", route_prefix=f"/{name}")
                for suite in p.eval_suites:
                    spec = f"heldout:{self.run / 'construct'}" if suite == "heldout" else suite
                    run_eval(
                        url,
                        name,
                        spec,
                        root / name / suite.split(":")[0],
                        limit=p.eval_limit,
                        max_tokens=p.eval_max_tokens,
                        distractors=self.cfg.sample.distractors,
                        seed=p.eval_seed,
                        max_turns=self.cfg.sample.max_turns_per_episode,
                        fit=fit,
                        progress=self.progress,
                    )
                serve.delete(f"eval-{name}")
        finally:
            serve.shutdown()
        summary = summarize(root, seed=p.eval_seed)
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
        if warning := sft_warning(summary):
            print(warning)
        return {}

    def _report(self) -> dict[str, Any]:
        from ttpa_ray.report import build_report, headline

        path = build_report(self.run)
        print(headline(self.run))
        print(f"report: {path}")
        return {}


# `pipeline.tiny` fields added after run dirs existed: in the model stage's key only when
# set to another value, so a run made before them keeps its keys (and is not redone).
_LATER_TINY_FIELDS = {"min_frequency", "tie_word_embeddings", "rms_norm_eps"}


def _tiny_key(tiny: Any) -> dict[str, Any]:
    data = tiny.model_dump()
    for name in _LATER_TINY_FIELDS:
        if data[name] == type(tiny).model_fields[name].default:
            del data[name]
    return data


def build_response_pairs(
    sample_dir: Path, construct_dir: Path, cfg: Config
) -> list[dict[str, Any]]:
    """The baseline's pairs from a TPS output (I/O only; the rule is
    `sample.pairs.response_pairs`): its turns rebuilt with the one prompt builder (the SFT
    policy's tokenizer for the fit), its `n_sample` candidates."""
    from ttpa_ray.sample.pairs import response_pairs
    from ttpa_ray.sample.stage import sampled_turns

    policy = {"policy": str(sample_dir.parent / "sft" / "model")}
    turns = sampled_turns(apply_overrides(cfg.sample, policy, "sample"), construct_dir)
    return response_pairs(turns, read_rows(sample_dir / "candidates.parquet"))


def run_pipeline(
    cfg: Config,
    run_dir: str | Path,
    start: str | None = None,
    progress: bool = True,
    until: str | None = None,
    prepare: Callable[[Pipeline], None] | None = None,
) -> dict[str, Any]:
    """Run the pipeline into `run_dir` (from `start`, through `until`); returns the state.
    `prepare(pipeline)` runs first (e.g. a benchmark adopting finished stages)."""
    from ttpa_ray.ray_utils import init_ray

    pipe = Pipeline(cfg, run_dir, progress)
    pipe.check_stage(until)
    init_ray()
    if prepare is not None:
        prepare(pipe)
    pipe.timeline = NodeTimeline(pipe.run / NODES_FILE).start()
    try:
        return pipe.run_all(start, stop_after=until)
    finally:
        pipe.timeline.stop()
        if pipe.store is not None:
            pipe.store.push()
