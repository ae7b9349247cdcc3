"""A machine without MLflow, Snakemake and DVC (the lent GPU machine's image): importing them fails."""
import sys

BLOCKED = ("mlflow", "snakemake", "dvc")


class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on this machine)", name=name)
        return None


sys.meta_path.insert(0, _Absent())
