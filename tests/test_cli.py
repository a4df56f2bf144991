"""The command line of scripts/train.py: parsed before torch is imported, grouped, with defaults, choices,
switches and each model's config fields."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_vae.training import arguments
from hf_vae.training.arguments import MODEL_REGISTRY, parse_args

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")


def run_train_script(*argv):
    """Run scripts/train.py in a fresh interpreter; report its exit code, output, and whether torch, transformers
    or datasets got imported."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', *{list(argv)!r}]\n"
        "code = 0\n"
        "try:\n"
        f"    runpy.run_path({TRAIN!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    code = exit.code or 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(code)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="100")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    out, _, heavy = result.stdout.rpartition("HEAVY=")
    return result.returncode, out, result.stderr, heavy.strip()


def test_help_is_answered_before_torch_is_imported():
    code, out, err, heavy = run_train_script("--help")
    assert code == 0, err
    assert heavy == "", f"--help imported {heavy}"
    assert "--model NAME" in out and all(name in out for name in MODEL_REGISTRY) and "klae" in MODEL_REGISTRY
    for title in arguments.GROUPS.values():
        assert f"\n{title}:\n" in out
    assert "--skip_nonfinite " in out and "[SKIP_NONFINITE]" not in out  # a switch, not a value
    assert "--mixed_precision {no,fp16,bf16}" in out
    assert "(default: 64)" in out  # defaults are shown
    assert max(len(line) for line in out.splitlines()) <= 100  # wrapped
    assert "vae model fields (VAEConfig" in out and "--latent_dim" in out


def test_model_help_lists_that_models_fields_with_descriptions():
    code, out, err, heavy = run_train_script("--model", "klae", "--help")
    assert code == 0 and heavy == "", (err, heavy)
    section = out[out.index("klae model fields (KLAEConfig"):]
    assert "--scaling_factor X" in section and "0.18215" in section
    assert "--latent_channels N" in section and "channels of the latent" in section
    assert "--use_quant_conv {true,false}" in section
    assert "--beta " not in section  # another model's field


def test_a_bad_flag_is_refused_before_torch_is_imported():
    code, _, err, heavy = run_train_script("--model", "vq_vae", "--num_embedings", "8")
    assert code == 2 and heavy == ""  # a usage error, as argparse's own
    assert err.startswith("train.py: error: Unknown argument(s) --num_embedings for --model vq_vae")
    code, _, err, heavy = run_train_script("--model", "gan")
    assert code == 2 and heavy == "" and "invalid choice: 'gan'" in err


def test_switches_and_their_older_true_false_spelling():
    train, data, _ = parse_args(["--skip_nonfinite", "--no_binarize"])
    assert train.skip_nonfinite is True and data.binarize is False
    train, data, _ = parse_args(["--skip_nonfinite", "false", "--binarize=true", "--push_to_hub", "yes",
                                 "--hub_model_id", "me/x"])
    assert train.skip_nonfinite is False and data.binarize is True and train.push_to_hub is True
    train, data, _ = parse_args([])
    assert train.skip_nonfinite is False and data.binarize is None  # None: the decoder decides
    with pytest.raises(ValueError, match=r"Expected --skip_nonfinite alone, or followed by true or false"):
        parse_args(["--skip_nonfinite=maybe"])
    train, _, _ = parse_args(["--checkpoints_total_limit", "none"])  # Optional ints take none
    assert train.checkpoints_total_limit is None


def test_config_fields_read_from_source_match_the_config_classes():
    """The command line reads the config fields from the modules' source (no import); they must be exactly
    the keyword arguments and defaults of the classes themselves."""
    import hf_vae
    from transformers import PretrainedConfig

    classes = {**hf_vae.MODELS, **hf_vae.PRIORS}
    assert set(MODEL_REGISTRY) == set(classes)
    for name, (module, class_name) in MODEL_REGISTRY.items():
        config_class = classes[name][0]
        assert (config_class.__module__, config_class.__name__) == (f"hf_vae.{module}", class_name)
        expected = {}
        for klass in config_class.__mro__:
            if klass is PretrainedConfig or not issubclass(klass, PretrainedConfig):
                break
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                    expected.setdefault(p.name, p.default)
        read = arguments.model_config_defaults(name)
        read.pop("image_size") if name == "klae" else None  # the alias of sample_size
        assert read == expected, name
        described = [f.name for f in arguments.model_config_field_info(name) if not f.description]
        assert described == [], f"{name}: fields without a docstring entry: {described}"


def test_docstring_entries_are_parsed_into_one_line_descriptions():
    doc = """Intro.

    Args:
        alpha (`int`, defaults to 1): the first (et al. 2017). Second sentence.
        beta_one (`float`), beta_two (`float`): shared
            over two lines.
        gamma (`bool`, defaults to True).
        Other fields are those of [`Base`].

    Example:
        >>> x
    """
    parsed = arguments._docstring_args(inspect.cleandoc(doc))
    assert parsed["alpha"] == "the first (et al. 2017)"
    assert parsed["beta_one"] == parsed["beta_two"] == "shared over two lines"
    assert parsed["gamma"] == "defaults to True"


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_run_says_what_it_does_before_the_first_step_and_sums_up_in_one_line(tmp_path, capsys, monkeypatch):
    from hf_vae.training import DataArguments, TrainArguments, train

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars are drawn on a terminal only
    output_dir = str(tmp_path / "run")
    train(TrainArguments(output_dir=output_dir, max_steps=2, batch_size=8, eval_steps=0, checkpointing_steps=0,
                         report_to="jsonl", eval_importance_samples=2, final_eval_max_examples=16,
                         num_sample_images=4),
          DataArguments(num_train_examples=64), {"image_size": 16, "hidden_dims": [16], "latent_dim": 2})
    out = capsys.readouterr()
    lines = out.out.splitlines()
    banner = lines[: lines.index("  steps   " + next(l[10:] for l in lines if l.startswith("  steps   "))) + 1]
    assert banner[0] == "Training vae on shapes"
    assert banner[1] == f"  output  {output_dir}"
    assert "M parameters" in banner[2] and "mlp [16], latent 2" in banner[2]
    assert banner[3] == "  data    shapes: 1x16x16 images, 64 train, 5,000 test examples"
    recipe_lr = arguments.recipe("vae", "shapes")["learning_rate"]  # not given: the recipe's
    assert banner[4].startswith(f"  steps   2 (~0.25 epochs), batch 8, lr {recipe_lr:g}")
    recipe_file = str(REPO / "configs" / "recipes" / "vae.yaml")
    assert lines[5] == f"  recipe  learning_rate={recipe_lr} (from {recipe_file}, for what was not given)"
    done = [line for line in lines if line.startswith("Done: 2 steps in ")]
    assert len(done) == 1 and output_dir in done[0] and "psnr" in done[0]
    assert "evaluate test:   0%|          | 0/16" in out.err  # the final evaluation's progress bar has a total


# ------------------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------------------


def test_every_recipe_builds_a_valid_config_for_its_model():
    from hf_vae import families
    from hf_vae.training.recipes import read_recipe
    from hf_vae.training.training_args import TrainArguments

    trainer_fields = set(TrainArguments.__dataclass_fields__)
    for model in MODEL_REGISTRY:
        entry = read_recipe(model)  # every family has its recipe file
        assert "every_dataset" in entry, model
        for dataset, settings in entry.items():
            for name in set(settings) & trainer_fields:  # only flags the user can leave unset
                assert TrainArguments.__dataclass_fields__[name].default is None, (model, name)
            fields = {k: v for k, v in settings.items() if k not in trainer_fields}
            arguments.check_model_config(model, fields)
            size = {"shapes": 64, "fashion_mnist": 28}.get(dataset, 64)
            family = families.get(model)
            if family.capabilities.code_prior:  # its config's shapes come from the autoencoder it models
                continue
            twin = family.capabilities.diffusers_twin
            fields.setdefault("sample_size" if twin else "image_size", size)
            fields.pop("image_size") if twin and "image_size" in fields else None
            family.config_class(**fields)  # the config's own checks pass


def test_a_recipe_fills_only_what_the_user_left_open():
    from hf_vae.training import DataArguments, TrainArguments
    from hf_vae.training.arguments import apply_recipe, recipe

    shapes = recipe("vae", "shapes")
    args, config, applied = apply_recipe(TrainArguments(), DataArguments(), {})
    assert (args.max_steps, args.learning_rate, args.batch_size) == (shapes["max_steps"], shapes["learning_rate"],
                                                                     shapes["batch_size"])
    assert config["backbone"] == "burgess" and applied == shapes
    # A flag or a field the user gives wins; any architecture field hands the whole architecture to the user.
    args, config, applied = apply_recipe(TrainArguments(max_steps=7), DataArguments(), {"latent_dim": 3})
    assert args.max_steps == 7 and config == {"latent_dim": 3} and "max_steps" not in applied
    # Another dataset: its entry, or only the settings for every dataset.
    _, config, _ = apply_recipe(TrainArguments(model="cvae"), DataArguments(dataset="fashion-mnist"), {})
    assert config["block_out_channels"] == recipe("cvae", "fashion_mnist")["block_out_channels"]
    _, config, _ = apply_recipe(TrainArguments(), DataArguments(dataset="my/images"), {})
    assert config == {}
    # Fine-tuning takes the architecture from the checkpoint.
    _, config, applied = apply_recipe(TrainArguments(model="klae"), DataArguments(), {}, pretrained=True)
    assert config == {} and set(applied) <= set(TrainArguments.__dataclass_fields__)
    # A model without a recipe: the fallbacks.
    args, _, applied = apply_recipe(TrainArguments(model="iwae" if "iwae" in MODEL_REGISTRY else "vae"),
                                    DataArguments(dataset="elsewhere"), {})
    assert args.eval_steps is not None and args.max_steps is not None


def test_help_lists_the_recipe_of_the_chosen_model():
    code, out, err, heavy = run_train_script("--model", "vq_vae", "--help")
    assert code == 0 and heavy == "", err
    section = out[out.index("vq_vae recipe"):]
    assert "kmeans_init True" in section and "--dataset shapes:" in section
    assert f"file: {REPO / 'configs' / 'recipes' / 'vq_vae.yaml'}" in section


def test_a_recipe_file_is_found_in_the_source_tree_or_in_the_package_data(tmp_path, monkeypatch):
    from hf_vae.training import recipes

    assert recipes.recipes_dir() == str(REPO / "configs" / "recipes")
    wheel = tmp_path / "site-packages" / "hf_vae"
    (wheel / "recipes").mkdir(parents=True)
    (wheel / "recipes" / "vae.yaml").write_text("every_dataset: {max_steps: 7}\n")
    monkeypatch.setattr(recipes, "_PACKAGE_DIR", str(wheel))
    assert recipes.recipe("vae", "shapes") == {"max_steps": 7}


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_klae_defaults_train_without_lpips_weights_when_none_can_be_had_and_say_so(tmp_path, monkeypatch, caplog):
    from hf_vae.training import DataArguments, TrainArguments, train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with caplog.at_level("WARNING", logger="hf_vae.training"):
        record = train(TrainArguments(model="klae", output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4,
                                      eval_steps=0, checkpointing_steps=0, report_to="jsonl",
                                      final_eval_max_examples=8, num_sample_images=4),
                       DataArguments(num_train_examples=16),
                       {"image_size": 32, "block_out_channels": [8, 16], "norm_num_groups": 4,
                        "mid_block_add_attention": False})
    said = [r.getMessage() for r in caplog.records if "WITHOUT the LPIPS perceptual term" in r.getMessage()]
    assert len(said) == 1 and "HF_HUB_OFFLINE is set" in said[0] and "--lpips_weights DIR" in said[0]
    assert record["step"] == 2
