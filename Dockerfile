# mtrec-jax on a GPU host.
#
#   docker build -t mtrec-jax .
#   docker run --gpus all -v /path/to/data:/data -e MTREC_DATA_DIR=/data \
#     mtrec-jax mtrec run census-mtl
#
# The jax[cuda12] wheels bring their own CUDA and cuDNN libraries (NVIDIA's
# pip packages); the base image supplies a matching CUDA 12 user space and
# the container only needs the host's NVIDIA driver (>= 525).
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git \
 && rm -rf /var/lib/apt/lists/*

# A non-root user owns the virtual environment and the code.
RUN useradd --create-home --shell /bin/bash mtrec
USER mtrec
WORKDIR /home/mtrec/mtrec-jax
RUN python3 -m venv /home/mtrec/venv
ENV PATH=/home/mtrec/venv/bin:$PATH

COPY --chown=mtrec:mtrec pyproject.toml README.md ./
COPY --chown=mtrec:mtrec mtrec_jax ./mtrec_jax
COPY --chown=mtrec:mtrec experiments ./experiments
RUN pip install --upgrade pip && pip install -e '.[cuda]'

# Runs and the results store land in the working directory; mount a volume
# there to keep them.
CMD ["mtrec", "list"]
