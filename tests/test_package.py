"""The package on its own: the benchmarks, recipes and accelerate configs ship inside it, so an installed
`deliberate` finds them from any folder, recipes load by name, and `recipe init` starts a recipe of your own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from deliberate.config import load_recipe
from deliberate.errors import DeliberateError
from deliberate.resources import accelerate_configs, packaged_recipes, resource_path
from deliberate.services.benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd, executable=(sys.executable, "-m", "deliberate"), env=None):
    env = {**os.environ, "COLUMNS": "250", **(env or {})}  # wide, so that rich does not wrap long paths
    env.pop("PYTHONPATH", None)
    return subprocess.run([*executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def test_packaged_benchmarks_are_found_from_a_folder_without_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_benchmark("xstest").name == "xstest"
    with pytest.raises(DeliberateError, match="known: .*demo.*xstest"):
        load_benchmark("no-such-benchmark")


def test_an_eval_folder_in_the_working_directory_comes_before_the_packaged_benchmarks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "xstest.yaml").write_text("name: xstest\ndescription: mine\ndata: {source: p.csv}\n")
    (tmp_path / "eval" / "local.yaml").write_text("name: local\ndata: {source: p.csv}\n")
    assert load_benchmark("xstest").description == "mine"
    with pytest.raises(DeliberateError, match="known: .*demo, local, .*xstest"):
        load_benchmark("no-such-benchmark")


def test_a_packaged_recipe_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == load_recipe("demo.yaml").name == "demo"
    assert load_recipe("sacpo-cpu").model.name == "smollm2"  # its `extends` resolve beside the packaged file
    (tmp_path / "demo.yaml").write_text("name: mine\n")
    assert load_recipe("demo.yaml").name == "mine"  # a file in the working directory comes first
    assert load_recipe("demo").name == "mine"  # by its bare name too


def test_a_mistyped_recipe_name_suggests_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeliberateError, match=r"dmeo: no such file, nor a packaged recipe; did you mean 'demo'\? "
                                              r"packaged recipes \(--recipe NAME\): .*sacpo-cpu"):
        load_recipe("dmeo")
    with pytest.raises(DeliberateError, match=r"recipes/demo.yaml: no such file; did you mean 'demo'\?"):
        load_recipe("recipes/demo.yaml")


def test_recipe_list_shows_every_packaged_recipe_and_accelerate_config(tmp_path):
    paths = run("recipe", "list", "--paths-only", cwd=tmp_path)
    assert paths.returncode == 0, paths.stderr
    expected = [*packaged_recipes().values(), *accelerate_configs().values()]
    assert paths.stdout.split() == [str(p) for p in expected]
    assert {"demo", "sacpo-cpu"} <= set(packaged_recipes()) and {"ddp", "fsdp"} <= set(accelerate_configs())
    listed = run("recipe", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "accelerate/ddp.yaml" in listed.stdout and "The demo:" in listed.stdout


def test_recipe_init_copies_the_demo_as_it_is_and_never_overwrites_without_force(tmp_path):
    out = run("recipe", "init", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    written = tmp_path / "recipe.yaml"
    assert "wrote recipe.yaml" in out.stdout and "--recipe recipe.yaml" in out.stdout
    assert written.read_bytes() == (resource_path("recipes") / "demo.yaml").read_bytes()  # comments kept
    assert load_recipe(written).model_dump() == load_recipe("demo").model_dump()
    written.write_text("name: edited\n")
    again = run("recipe", "init", cwd=tmp_path)
    assert again.returncode == 2 and "error: recipe.yaml: exists" in again.stderr and "--force" in again.stderr
    assert written.read_text() == "name: edited\n"
    assert run("recipe", "init", "--force", cwd=tmp_path).returncode == 0
    assert load_recipe(written).name == "demo"


def test_recipe_init_from_a_recipe_that_extends_others_writes_them_merged_into_one_file(tmp_path):
    out = run("recipe", "init", "my.yaml", "--from", "sacpo-cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "my.yaml").read_text()
    assert text.startswith("# Written by `deliberate recipe init --from sacpo-cpu`: sacpo.yaml, cpu-small.yaml, "
                           "sacpo-cpu.yaml merged")
    assert "\nextends:" not in text
    assert load_recipe(tmp_path / "my.yaml").model_dump() == load_recipe("sacpo-cpu").model_dump()
    typo = run("recipe", "init", "other.yaml", "--from", "sacpo-cpuu", cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean 'sacpo-cpu'" in typo.stderr
    assert not (tmp_path / "other.yaml").exists()


def test_the_wheel_installed_outside_a_clone_evaluates_a_packaged_benchmark(tmp_path, tiny_model_dir,
                                                                            shared_datasets):
    # Built from a copy of the sources, so that the build's own folders never land in the clone.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "deliberate", src / "deliberate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--disable-pip-version-check", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("deliberate-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = {p.relative_to(src).as_posix() for p in (src / "deliberate" / "resources").rglob("*") if p.is_file()}
        assert shipped - names == set()  # every resource file, whatever is added later
        assert {"deliberate/resources/benchmarks/xstest.yaml", "deliberate/resources/benchmarks/README.md",
                "deliberate/resources/recipes/demo.yaml", "deliberate/resources/recipes/accelerate/ddp.yaml"} <= names
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(licence) == (ROOT / "LICENSE").read_bytes()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in z.read(metadata).decode()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
                    str(wheel)], check=True, timeout=300)
    # The dependencies come from this environment's site-packages, named as a plain path: the .pth files in it
    # (the editable install of the clone among them) are not run, so `deliberate` is the wheel's copy.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DELIBERATE_CACHE": str(tmp_path / "cache")}
    where = run("-c", "import deliberate; print(deliberate.__file__)", cwd=outside, executable=(python,), env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    def deliberate(*args):
        return run(*args, cwd=outside, executable=(venv / "bin" / "deliberate",), env=env)

    spec = deliberate("spec", "render")
    assert spec.returncode == 0 and "Safety policy" in spec.stdout, spec.stderr
    recipes = deliberate("recipe", "list", "--paths-only")
    assert recipes.returncode == 0 and all(Path(p).is_relative_to(venv) for p in recipes.stdout.split())
    assert deliberate("recipe", "show", "--recipe", "demo", "--section", "eval").returncode == 0
    evaluated = deliberate("eval", "--benchmark", "xstest", "--set", f"model.name={tiny_model_dir}",
                           "--set", f"eval.datasets_dir={shared_datasets}", "--set", "generation.max_new_tokens=4",
                           "--set", "eval.plots=false")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "xstest" in evaluated.stdout
    report = json.loads((outside / "runs" / "default" / "eval" / "report.json").read_text())
    assert [(r["benchmark"], r["prompts"]) for r in report["results"]] == [("xstest", 450)]
    # The report's folder says what made it: the installed wheel's version, outside any git clone.
    made = json.loads((outside / "runs" / "default" / "eval" / "provenance.json").read_text())
    assert made["versions"]["deliberate"] == "0.1.0" and made["git"] is None
    assert made["command"][1:3] == ["eval", "--benchmark"] and made["recipe"]["eval"]["datasets_dir"] == str(
        shared_datasets)
