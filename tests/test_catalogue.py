"""The worker catalogue is the one table of workers: everything that lists them reads it."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

from akita import catalogue, resources
from akita import config as config_mod
from supervisor import control, table
from workers import base


def test_config_takes_worker_order_and_sections_from_the_catalogue() -> None:
    assert config_mod.WORKER_ORDER is catalogue.WORKER_ORDER
    assert config_mod.WORKER_SECTIONS == {e.name: e.sections for e in catalogue.WORKERS}
    defaults = config_mod.SupervisorConfig()
    assert defaults.workers == catalogue.WORKER_ORDER


def test_every_section_a_worker_reads_is_in_the_config() -> None:
    fields = {f.name for f in dataclasses.fields(config_mod.Config)}
    for entry in catalogue.WORKERS:
        assert set(entry.sections) <= fields, entry.name


def test_worker_sections_are_known_to_the_config_parser(tmp_path: Path) -> None:
    text = "[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n" + "".join(
        f"[worker:{name}]\nrestart = never\n" for name in catalogue.WORKER_ORDER)
    config = config_mod.parse(text, tmp_path / "akita.ini")
    assert list(config.workers) == list(catalogue.WORKER_ORDER)


def test_control_routes_every_noun_to_its_catalogue_owner() -> None:
    assert not hasattr(control, "OWNERS")
    for entry in catalogue.WORKERS:
        for noun in entry.nouns:
            assert catalogue.owner_of(f"{noun}.anything") == entry.name
    assert catalogue.owner_of("node.status") is None
    assert catalogue.owner_of("nosuch.verb") is None


def test_request_nouns_belong_to_one_worker_each() -> None:
    nouns = [noun for entry in catalogue.WORKERS for noun in entry.nouns]
    assert len(nouns) == len(set(nouns))


def test_entry_points_name_worker_subclasses_with_their_catalogue_name() -> None:
    for entry in catalogue.WORKERS:
        module = importlib.import_module(entry.module)
        cls = getattr(module, entry.class_name)
        assert issubclass(cls, base.Worker), entry.entry_point
        assert cls.name == entry.name, entry.entry_point
        assert base.load_class(entry.name) is cls


def test_worker_main_is_the_base_entry() -> None:
    module, _, func = catalogue.WORKER_MAIN.partition(":")
    assert getattr(importlib.import_module(module), func) is base.main


def test_zygote_preload_is_the_catalogue_preload() -> None:
    preload = table.zygote_preload()
    assert preload == list(catalogue.preload())
    assert len(preload) == len(set(preload))
    for entry in catalogue.WORKERS:
        assert set(entry.preload) <= set(preload)


def test_every_preload_imports_without_reticulum() -> None:
    """In a fresh interpreter, as the zygote does: each module imports and none pulls in RNS,
    which only the gateway's own process may import."""
    code = ("import importlib, sys\n"
            f"for name in {list(catalogue.preload())!r}:\n"
            "    importlib.import_module(name)\n"
            "assert 'RNS' not in sys.modules, 'a preloaded module imported RNS'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_sampler_labels_the_task_runners_children_as_tasks() -> None:
    runner = catalogue.TASK_RUNNER
    assert [e.name for e in catalogue.WORKERS if e.runs_tasks] == [runner]
    roles = resources.assign_roles(1, {1: [10, 20], 10: [11], 20: [21]},
                                   {10: runner, 20: catalogue.LEDGER})
    assert roles[11] == resources.Role(resources.TASK, resources.TASK)
    assert roles[21] == resources.Role(resources.CHILD, f"{catalogue.LEDGER}.child")
