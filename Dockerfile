# syntax=docker/dockerfile:1
# wxscale on an NGC PyTorch image (build and run commands: submit/README.md).
#
# nvcr.io/nvidia/pytorch:25.12-py3, per NVIDIA's release notes for 25.12: Ubuntu 24.04, Python 3.12, CUDA 13.1.0,
# PyTorch 2.10.0a0 (NVIDIA's build, in /usr/local/lib/python3.12/dist-packages), with the matching cuDNN, NCCL,
# TransformerEngine and the OpenMPI/UCX/HPC-X stack, and a pip constraints file (/etc/pip/constraint.txt, since
# 25.03) pinning every Python package the image was built with. RAPIDS left the image with 25.09.
# Recent releases do not all ship DALI or apex, so the build installs DALI when `import nvidia.dali` fails (the
# CUDA 13 wheel, matching CUDA 13.1) and treats apex as optional: the trainer uses torch's fused AdamW unless
# optim.impl=apex asks for it.
# The image's torch is never replaced: the suite goes in with --no-deps, then only its own non-torch
# dependencies (from pyproject.toml) under the image's constraints, and the build fails if torch changed.
FROM nvcr.io/nvidia/pytorch:25.12-py3

ARG DALI_VERSION=2.4.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    WXSCALE_SUBMIT_DIR=/opt/wxscale/submit

WORKDIR /opt/wxscale
COPY pyproject.toml README.md ./
COPY data_prep ./data_prep
COPY model ./model
COPY bench ./bench
COPY submit ./submit

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -c "import torch; print(torch.__version__)" > /tmp/torch-before \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-deps . \
 && pip install --requirement /tmp/requirements.txt \
 && (python -c "import nvidia.dali" 2>/dev/null || pip install "nvidia-dali-cuda130==${DALI_VERSION}") \
 && python -c "import torch; print(torch.__version__)" | diff - /tmp/torch-before \
 && rm -f /tmp/requirements.txt /tmp/torch-before

# The default command (and apptainer.def's %test): the CLI answers and the stack imports; prints versions.
COPY --chmod=0755 <<'SELFCHECK' /usr/local/bin/wxscale-selfcheck
#!/bin/bash
set -euo pipefail
wxscale --help > /dev/null
exec python - <<'PY'
import importlib.util

import torch

import wxscale.cli, wxscale.data_prep.layout, wxscale.model.swin  # noqa: F401  (the suite imports)

cuda = torch.cuda.is_available()
nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else "n/a"
dali = "absent"
if importlib.util.find_spec("nvidia.dali"):
    import nvidia.dali
    dali = nvidia.dali.__version__
apex = "present" if importlib.util.find_spec("apex") else "absent"
print(f"wxscale self-check ok: torch {torch.__version__}, CUDA {torch.version.cuda} (available: {cuda}, "
      f"{torch.cuda.device_count()} GPUs), NCCL {nccl}, DALI {dali}, apex {apex}")
PY
SELFCHECK

# An unprivileged user; data and run dirs bound in (docker run -v) keep the host's ownership.
RUN useradd --no-log-init --create-home --uid 10001 --shell /bin/bash wxscale
USER 10001
WORKDIR /home/wxscale

CMD ["wxscale-selfcheck"]
