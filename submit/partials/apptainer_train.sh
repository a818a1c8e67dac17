# wxscale:param config=<required>  training config (YAML) given to wxscale train
# wxscale:param run_dir=<required>  run dir the trainer writes (created if missing)
# wxscale:param data_dir=<required>  dataset dir, bound into the container at the same path
# wxscale:param image=wxscale.sif  Apptainer image built from apptainer.def
# wxscale:param apptainer=apptainer  container runtime command (apptainer, or singularity on older sites)
# wxscale:param bind=  extra binds, comma-separated SRC[:DST[:ro]] (e.g. a scratch folder)
# wxscale:param nccl_plugin_dir=  host folder holding the site's aws-ofi-nccl plugin; bound and put on LD_LIBRARY_PATH
# wxscale:param mpi=none [one of: none|pmi2|pmix] srun --mpi plugin (the trainer needs none: it reads SLURM_* itself)
# wxscale:param extra_args=  more arguments for wxscale train, split like a shell would and each quoted (never a command)
set -euo pipefail
CONFIG="$(realpath {{config|q}})"
RUN_DIR={{run_dir|q}}
DATA_DIR="$(realpath {{data_dir|q}})"
IMAGE={{image|q}}
EXTRA_BINDS={{bind|q}}
mkdir -p "$RUN_DIR"
RUN_DIR="$(realpath "$RUN_DIR")"

{{> rendezvous.sh}}

{{> network.sh}}

# Data, run dir and the config's folder are bound at their own paths, so every path in the config means
# the same inside the container as outside.
BINDS="${DATA_DIR},${RUN_DIR},$(dirname "$CONFIG")"
if [[ -n "$EXTRA_BINDS" ]]; then
  BINDS="${BINDS},${EXTRA_BINDS}"
fi
WXSCALE_NCCL_PLUGIN_DIR={{nccl_plugin_dir|q}}
if [[ -n "$WXSCALE_NCCL_PLUGIN_DIR" ]]; then
  # apptainer.def's %environment puts this folder first on LD_LIBRARY_PATH inside the container.
  BINDS="${BINDS},${WXSCALE_NCCL_PLUGIN_DIR}"
  export WXSCALE_NCCL_PLUGIN_DIR
fi

# One task per GPU. Every task sees all of its node's GPUs and picks cuda:SLURM_LOCALID: hiding the others
# per task (--gpus-per-task) would stop NCCL from using NVLink/P2P between them. --cpus-per-task is
# repeated because srun does not inherit it from sbatch in Slurm 22.05-23.02.
srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --mpi={{mpi}} --kill-on-bad-exit=1 \
  {{apptainer|q}} exec --nv --bind "$BINDS" "$IMAGE" \
  wxscale train --config "$CONFIG" --run-dir "$RUN_DIR" {{extra_args|args}}
