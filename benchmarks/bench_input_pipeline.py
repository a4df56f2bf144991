#!/usr/bin/env python
"""Is the trainer fed as fast as a tensor loop?  hf_vae's trainer against bare loops, three input pipelines.

1. fashion  MLP VAE 784-512-512-32 on dynamically binarised Fashion-MNIST, batch 128, fused Adam 1e-3:
            * hf_vae trainer (`hf_vae.training.train`: Arrow batches, binarisation drawn in the step);
            * bare loop over in-memory tensors (index a tensor, `torch.bernoulli`), the same model and optimiser;
            * pythae 0.1.2's BaseTrainer with the same networks, Bernoulli (BCE) loss and fused Adam, on a
              dataset that binarises each example as it is read (pythae has no dynamic binarisation), when
              pythae imports (`--pythae_site DIR`: `pip install --no-deps --target DIR pythae==0.1.2`, which keeps
              this torch).
2. shapes   conv VAE (16, 32, 64 channels, spatial latent) on 64x64 shapes, batch 16: the trainer against a bare loop
            over the same decoded source (the trainer's own `TrainStream`, Arrow batches, no workers).
3. jpeg     KL autoencoder at 256x256 on a folder of JPEG photos (made from scikit-image's photos), batch 4: the
            trainer against a bare loop over the same source decoded in the same number of DataLoader workers,
            computing the same loss (`objective.generator_loss`).

Throughput is images per second of the training loop (the trainer's own loop time, without start-up,
evaluation or checkpoints; bare loops are timed from their first batch request to their last step).  Runs are
interleaved in rounds, and ratios are taken within a round (machine load drifts).  `--clock cpu` (the default)
times with this process's CPU time instead of the wall clock (the trainer's loop timer is pointed at
`time.process_time`): on a machine shared with other jobs, wall time mostly measures when the scheduler lets the
process run.  CPU time leaves out DataLoader workers, so the JPEG case, whose decoding runs in workers, is
always timed with the wall clock.  The per-step breakdown (data,
forward + backward, optimiser; medians in ms) comes from an instrumented bare loop over each trainer's data path.

    python benchmarks/bench_input_pipeline.py --threads 1                 # all three, full
    python benchmarks/bench_input_pipeline.py --threads 1 --quick         # short rounds
    python benchmarks/bench_input_pipeline.py --only fashion --pythae_site /tmp/pythae_site

Prints a table and writes JSON to benchmarks/results/input_pipeline[_quick].json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, table, write_result  # noqa: E402

FASHION_CONFIG = {"image_size": 28, "in_channels": 1, "hidden_dims": [512, 512], "latent_dim": 32,
                  "likelihood": "bernoulli"}
SHAPES_CONFIG = {"image_size": 64, "in_channels": 1, "backbone": "conv", "block_out_channels": [16, 32, 64],
                 "norm_num_groups": 8, "mid_block_add_attention": False, "latent_channels": 4,
                 "likelihood": "bernoulli"}
KLAE_CONFIG = {"image_size": 256, "block_out_channels": [32, 64, 64], "norm_num_groups": 32, "layers_per_block": 1,
               "latent_channels": 4, "kl_weight": 1e-6}
LR = 1e-3


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


CLOCK = {"fn": time.perf_counter}  # set by --clock


class _TrainerClock:
    """Stands in for the `time` module inside the trainer, so that its loop timer reads CLOCK."""

    def perf_counter(self):
        return CLOCK["fn"]()

    def __getattr__(self, name):
        return getattr(time, name)


class Case:
    """One model + data recipe: the trainer's arguments and the pieces a bare loop needs."""

    def __init__(self, name, model, model_config, batch_size, dataset, workdir, num_workers=None, **train_overrides):
        self.name, self.model_name, self.model_config = name, model, dict(model_config)
        self.batch_size, self.dataset, self.workdir, self.num_workers = batch_size, dataset, workdir, num_workers
        self.train_overrides = train_overrides

    def args(self, steps):
        from hf_vae.training import DataArguments, TrainArguments

        kwargs = dict(model=self.model_name, output_dir=os.path.join(self.workdir, f"{self.name}-{time.time_ns()}"),
                      batch_size=self.batch_size, learning_rate=LR, lr_scheduler="constant", warmup_steps=0,
                      max_grad_norm=0.0, eval_steps=0, checkpointing_steps=0, report_to="none",
                      eval_importance_samples=0, final_eval_max_examples=8, eval_batch_size=8, num_sample_images=4,
                      seed=0, max_steps=steps, logging_steps=50)
        kwargs.update(self.train_overrides)
        return TrainArguments(**kwargs), DataArguments(dataset=self.dataset, num_workers=self.num_workers)

    def trainer_rate(self, steps):
        import hf_vae.training.trainer as trainer_module
        from hf_vae.training import train

        train_args, data_args = self.args(steps)
        trainer_module.time = _TrainerClock()
        try:
            record = train(train_args, data_args, dict(self.model_config))
        finally:
            trainer_module.time = time
        reset_accelerate()
        return record["train"]["examples_per_second"]

    def parts(self):
        """(model, fused Adam, objective, noise, stream): the trainer's own pieces, built as the trainer does."""
        import hf_vae
        from hf_vae.evaluation.evaluate import data_settings
        from hf_vae.data.noise import BatchNoise
        from hf_vae.training.objectives import build_objective
        from hf_vae.training.streams import TrainStream
        from hf_vae.training.trainer import _describe, build_model_config

        train_args, data_args = self.args(1)
        config = build_model_config(train_args, data_args, dict(self.model_config), _describe(data_args, self.model_config))
        settings = data_settings(config, data_args.binarize)
        torch.manual_seed(0)
        model = hf_vae.MODELS[self.model_name][1](config).train()
        objective = build_objective(train_args, model, settings["value_range"], data_args.dataset)
        params = [p for p in model.parameters() if p.requires_grad] + objective.extra_parameters()
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True)
        noise = BatchNoise(0, 0, binarize=settings["binarize"], dequantize=settings.get("dequantize", False),
                           value_range=settings["value_range"], device=torch.device("cpu"))
        stream = TrainStream(self.dataset, settings, batch_size=self.batch_size, seed=0, data_seed=0,
                             num_workers=self.num_workers)
        return model, optimizer, objective, noise, stream

    def bare_rate(self, steps, breakdown=None):
        """A bare loop over the trainer's own data path (same stream, same workers, same noise, same loss)."""
        model, optimizer, objective, noise, stream = self.parts()
        start = CLOCK["fn"]()
        batches = iter(stream)
        timed_steps(steps, lambda step: noise(next(batches), step),
                    lambda batch, step: objective.generator_loss(model, batch, step)[0], optimizer, breakdown)
        return steps * self.batch_size / (CLOCK["fn"]() - start)


def timed_steps(steps, next_batch, loss_of, optimizer, breakdown=None):
    """`steps` optimisation steps; with `breakdown`, append (data, forward + backward, optimiser) seconds."""
    clock = CLOCK["fn"]
    for step in range(steps):
        t0 = clock()
        batch = next_batch(step)
        t1 = clock()
        loss_of(batch, step).backward()
        t2 = clock()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = clock()
        if breakdown is not None:
            breakdown.append((t1 - t0, t2 - t1, t3 - t2))


def fashion_memory_rate(case, steps, images, breakdown=None):
    """Bare loop over in-memory tensors, binarised with torch.bernoulli: the same model, loss and optimiser."""
    model, optimizer, objective, _, _ = case.parts()
    generator = torch.Generator().manual_seed(0)
    start = CLOCK["fn"]()
    order = torch.randperm(len(images), generator=generator)

    def next_batch(step):
        idx = order[(step * case.batch_size) % (len(images) - case.batch_size):][:case.batch_size]
        return torch.bernoulli(images[idx], generator=generator)

    timed_steps(steps, next_batch, lambda x, step: model(x).loss, optimizer, breakdown)
    return steps * case.batch_size / (CLOCK["fn"]() - start)


def pythae_runner(images, pythae_site, workdir):
    """A function steps -> examples/s of pythae 0.1.2's BaseTrainer on the Fashion-MNIST recipe, or None."""
    try:
        from _pythae import pythae_mlp_pieces

        Encoder, Decoder, Binarised = pythae_mlp_pieces(pythae_site)
        from pythae.models import VAE, VAEConfig
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
    except ImportError as error:
        print(f"pythae not available ({error}): skipped")
        return None, None
    import pythae

    def run(steps, breakdown=None):
        torch.manual_seed(0)
        model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=32, reconstruction_loss="bce"),
                    encoder=Encoder(), decoder=Decoder())
        config = BaseTrainerConfig(output_dir=os.path.join(workdir, "pythae"), per_device_train_batch_size=128,
                                   num_epochs=1, learning_rate=LR, optimizer_cls="AdamW",
                                   optimizer_params={"weight_decay": 0.0, "fused": True}, no_cuda=True)
        data = Binarised(images[: steps * 128], torch.zeros(steps * 128))
        trainer = BaseTrainer(model, data, training_config=config)
        trainer.prepare_training()
        if breakdown is not None:  # pythae's data path alone: its DataLoader and collation
            loader = iter(trainer.train_loader)
            for _ in range(steps):
                t0 = CLOCK["fn"]()
                next(loader)
                breakdown.append((CLOCK["fn"]() - t0, float("nan"), float("nan")))
            return None
        start = CLOCK["fn"]()
        trainer.train_step(1)
        return steps * 128 / (CLOCK["fn"]() - start)

    return run, pythae.__version__ if hasattr(pythae, "__version__") else "0.1.2"


def make_jpeg_folder(folder, count=48, seed=0):
    """JPEG photos of 300-420 px made from scikit-image's bundled RGB photos (random crops, quality 90)."""
    import numpy as np
    from PIL import Image

    from hf_vae.data.images import available_photos

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [img for _, img in available_photos()]
    for i in range(count):
        img = photos[i % len(photos)]
        side = int(rng.integers(300, min(421, min(img.shape[:2]) + 1)))
        y = int(rng.integers(0, img.shape[0] - side + 1))
        x = int(rng.integers(0, img.shape[1] - side + 1))
        Image.fromarray(img[y: y + side, x: x + side]).save(os.path.join(folder, f"{i:03d}.jpg"), quality=90)
    return folder


def median_ms(values):
    return round(1e3 * statistics.median(values), 3) if values else None


def breakdown_record(samples):
    data, compute, optim = zip(*samples) if samples else ((), (), ())
    clean = lambda xs: [x for x in xs if x == x]  # noqa: E731  (drop NaN)
    return {"data_ms": median_ms(clean(data)), "forward_backward_ms": median_ms(clean(compute)),
            "optimizer_ms": median_ms(clean(optim))}


def interleave(runners, rounds):
    measured = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            measured[name].append(run())
    return measured


def ratio(measured, a, b):
    return statistics.median([x / y for x, y in zip(measured[a], measured[b])])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short rounds (fashion 60 steps, 2 rounds)")
    parser.add_argument("--only", choices=["fashion", "shapes", "jpeg"], action="append", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="Fashion-MNIST steps per round (default 300; quick 60)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--pythae_site", default="/tmp/pythae_site",
                        help="folder pythae 0.1.2 was installed into with --no-deps --target")
    parser.add_argument("--jpeg_workers", type=int, default=None,
                        help="DataLoader workers for the JPEG folder (default: the trainer's default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="time with this process's CPU time (default; robust on a shared machine) or wall time")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    rounds = args.rounds or (2 if quick else 5)
    cpu_clock = time.process_time if args.clock == "cpu" else time.perf_counter
    only = set(args.only or ["fashion", "shapes", "jpeg"])
    workdir = tempfile.mkdtemp(prefix="bench_input_")
    CLOCK["fn"] = cpu_clock
    result = {"benchmark": "input_pipeline", "clock": args.clock, "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine(), "load_average_at_start": os.getloadavg(), "rounds": rounds}
    rows = []

    if "fashion" in only:
        from hf_vae.data import load_fashion_mnist_arrays

        steps = args.steps or (60 if quick else 300)
        case = Case("fashion", "vae", FASHION_CONFIG, 128, "fashion_mnist", workdir)
        images = torch.from_numpy(load_fashion_mnist_arrays("train")[0].copy()).float().div_(255).view(-1, 1, 28, 28)
        pythae_run, pythae_version = pythae_runner(images, args.pythae_site, workdir)
        runners = {"trainer": lambda: case.trainer_rate(steps), "bare_memory": lambda: fashion_memory_rate(case, steps, images)}
        if pythae_run is not None:
            runners["pythae"] = lambda: pythae_run(steps)
        for run in runners.values():  # warm-up: caches, imports, allocator
            run()
        measured = interleave(runners, rounds)
        parts = {"trainer_data_path": [], "bare_memory": [], "pythae_data_path": []}
        case.bare_rate(steps, parts["trainer_data_path"])
        fashion_memory_rate(case, steps, images, parts["bare_memory"])
        if pythae_run is not None:
            pythae_run(steps, parts["pythae_data_path"])
        section = {"steps_per_round": steps, "examples_per_second": measured,
                   "median_examples_per_second": {k: statistics.median(v) for k, v in measured.items()},
                   "trainer_vs_bare_memory": ratio(measured, "trainer", "bare_memory"),
                   "breakdown": {k: breakdown_record(v) for k, v in parts.items() if v}}
        if pythae_run is not None:
            section["trainer_vs_pythae"] = ratio(measured, "trainer", "pythae")
            section["pythae_version"] = pythae_version
        result["fashion"] = section
        med = section["median_examples_per_second"]
        rows.append(["Fashion-MNIST MLP VAE (b128)", f"{med['trainer']:.0f}", f"{med['bare_memory']:.0f} (in memory)",
                     f"{section['trainer_vs_bare_memory']:.3f}",
                     f"{med['pythae']:.0f} / {section['trainer_vs_pythae']:.3f}" if "pythae" in med else "-"])

    for name, enabled, make in (
            ("shapes", "shapes" in only,
             lambda: Case("shapes", "vae", SHAPES_CONFIG, 16, "shapes", workdir)),
            ("jpeg", "jpeg" in only,
             lambda: Case("jpeg", "klae", KLAE_CONFIG, 4, make_jpeg_folder(os.path.join(workdir, "jpeg")), workdir,
                          num_workers=args.jpeg_workers, disc_start=10**9, perceptual_weight=0.0))):
        if not enabled:
            continue
        case = make()
        CLOCK["fn"] = time.perf_counter if name == "jpeg" else cpu_clock  # workers' CPU time is not ours
        steps = {"shapes": 4 if quick else 10, "jpeg": 2 if quick else 4}[name]
        runners = {"trainer": lambda: case.trainer_rate(steps), "bare_same_source": lambda: case.bare_rate(steps)}
        for run in runners.values():
            run()
        measured = interleave(runners, rounds)
        samples = []
        case.bare_rate(steps, samples)
        workers = case.parts()[-1].num_workers
        section = {"steps_per_round": steps, "batch_size": case.batch_size, "num_workers": workers,
                   "clock": "wall" if CLOCK["fn"] is time.perf_counter else "cpu",
                   "examples_per_second": measured,
                   "median_examples_per_second": {k: statistics.median(v) for k, v in measured.items()},
                   "trainer_vs_bare_same_source": ratio(measured, "trainer", "bare_same_source"),
                   "breakdown": {"trainer_data_path": breakdown_record(samples)}}
        result[name] = section
        med = section["median_examples_per_second"]
        label = {"shapes": "shapes 64² conv VAE (b16)", "jpeg": f"JPEG folder 256² KLAE (b4, {workers} workers)"}[name]
        rows.append([label, f"{med['trainer']:.1f}", f"{med['bare_same_source']:.1f} (same source)",
                     f"{section['trainer_vs_bare_same_source']:.3f}", "-"])

    result["load_average_at_end"] = os.getloadavg()
    output = args.output or os.path.join(ROOT, "benchmarks", "results", f"input_pipeline{'_quick' if quick else ''}.json")
    if os.path.isfile(output) and args.only:  # keep the sections not rerun, with the command that made them
        import json

        with open(output) as f:
            previous = json.load(f)
        for name in ("fashion", "shapes", "jpeg"):
            if name not in result and name in previous:
                result[name] = dict(previous[name], command=previous[name].get("command", previous.get("command")))
    for name in ("fashion", "shapes", "jpeg"):
        if name in result:
            result[name].setdefault("command", result["command"])
    write_result(result, output)
    print()
    print(table(rows, ["recipe", "trainer img/s", "bare loop img/s", "trainer / bare", "pythae img/s / ratio"]))
    for name in ("fashion", "shapes", "jpeg"):
        for path, parts in result.get(name, {}).get("breakdown", {}).items():
            print(f"{name:8s} {path:18s} data {parts['data_ms']} ms, forward+backward {parts['forward_backward_ms']} "
                  f"ms, optimiser {parts['optimizer_ms']} ms")
    print(f"\nload average: start {result['load_average_at_start']}, end {result['load_average_at_end']}")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
