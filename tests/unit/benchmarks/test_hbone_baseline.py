"""benchmarks/load/hbone.py --baseline: the pair runs with `shoal.*` and
`tests.*` imported from the other checkout, not from this one (the editable
install maps `shoal.*` here)."""

import subprocess
import textwrap

import pytest

from shoal.benchmarks.load import hbone


def _checkout(root, mark: str) -> None:
    """A minimal shoal-shaped checkout whose hbone_tools reports where it ran."""
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.setuptools]
        package-dir = { "shoal" = "shoal", "shoal.core" = "core" }
    """))
    for pkg in ("shoal", "core", "core/hbone", "tests", "tests/helpers"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "core" / "hbone" / "mark.py").write_text(f"MARK = {mark!r}\n")
    (root / "tests" / "helpers" / "hbone_tools.py").write_text(textwrap.dedent("""
        import sys
        import shoal.core.hbone.mark as m
        print("READY", m.MARK, m.__file__, __file__, *sys.argv[1:])
    """))


def test_tool_command_imports_shoal_from_the_other_checkout(tmp_path):
    _checkout(tmp_path, "before")
    out = subprocess.run([*hbone.tool_command(tmp_path), "exit", "--x"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["READY", "before"]
    assert out[2] == str(tmp_path / "core" / "hbone" / "mark.py")
    assert out[3] == str(tmp_path / "tests" / "helpers" / "hbone_tools.py")
    assert out[4:] == ["exit", "--x"]


def test_this_checkout_runs_the_module_directly():
    assert hbone.tool_command(hbone.ROOT)[1:] == ["-m", "tests.helpers.hbone_tools"]


def test_prepare_tree_refuses_a_directory_that_is_no_checkout(tmp_path):
    with pytest.raises(SystemExit, match="not a shoal checkout"):
        hbone.prepare_tree(tmp_path)


def test_print_command_names_the_checkout_and_module(tmp_path, capsys):
    _checkout(tmp_path, "before")
    hbone.main(["--print-command", str(tmp_path), "tests.helpers.hbone_tools"])
    cmd = capsys.readouterr().out.strip()
    out = subprocess.run(f"{cmd} extra", shell=True, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:2] == ["READY", "before"] and out[-1] == "extra"


def test_each_variant_is_the_median_of_its_rounds():
    """One slow round (either side's) does not decide the run's ratio."""
    def rnd(gbit):
        return {"gbit_s": gbit, "cpu_s_per_gb_entry": 1 / gbit, "cpu_s_per_gb_exit": 0.5 / gbit,
                "cpu_s_per_process": {"entry": [1.0], "exit": [0.5]},
                "cores": {"entry": gbit / 10, "exit": gbit / 20}}
    out = hbone._summary({"shoal": [rnd(7.5), rnd(5.8), rnd(7.9)],
                          "stunnel": [rnd(6.0), rnd(6.9), rnd(6.5)]})
    assert out["shoal"]["gbit_s"] == 7.5
    assert out["stunnel"]["gbit_s"] == 6.5
    assert out["ratio_gbit_s"] == pytest.approx(7.5 / 6.5)
    assert out["shoal"]["cpu_s_per_gb_entry"] == pytest.approx(1 / 7.5)
    assert out["shoal"]["runs_gbit_s"] == [7.5, 5.8, 7.9]
