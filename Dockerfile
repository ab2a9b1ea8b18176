# syntax=docker/dockerfile:1
# The sovereign-mlops image: the Dagster code location (default command), and, with a
# different command, the gateway, MLflow server and torchrun training pods.
#
#   docker build -t sovereign-mlops:0.1.0 .                                   # CPU
#   docker build --build-arg TORCH_INDEX=cu128 -t sovereign-mlops:0.1.0-cu128 .  # GPU training
#
# Notable choices:
# - torch is installed first, pinned, from PyTorch's own index for the chosen variant, so
#   installing the project cannot pull a different (multi-GB CUDA) torch as a dependency.
# - The Dagster Helm chart and the K8sRunLauncher start containers with `args` only, so the
#   entrypoint must not contain a command of its own: it is tini (reaps torchrun's children,
#   forwards signals) and the gRPC server is the default CMD.
# - dagster-k8s (the run launcher, imported by every run pod) and boto3 (MLflow's S3
#   artifact store) are cluster-only dependencies, pinned here beside the project.
# - Runs as an unprivileged user (uid 10001) and works with a read-only root filesystem:
#   everything it writes goes to /tmp or the mounted $MLOPS_HOME.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ARG TORCH_VERSION=2.13.0
# cpu, or a CUDA tag of PyTorch's wheel index (cu126, cu128, ...) for GPU nodes.
ARG TORCH_INDEX=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . /src
RUN pip install /src "dagster-k8s>=0.29,<0.30" "boto3>=1.34,<2"

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mlops \
    && useradd --system --uid 10001 --gid mlops --create-home --home-dir /home/mlops mlops \
    && mkdir -p /var/lib/mlops /opt/dagster/dagster_home \
    && chown mlops:mlops /var/lib/mlops /opt/dagster/dagster_home
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLOPS_HOME=/var/lib/mlops \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HUB_OFFLINE=1
WORKDIR /home/mlops
USER 10001:10001
EXPOSE 3030
ENTRYPOINT ["tini", "--"]
CMD ["dagster", "api", "grpc", "-m", "orchestration.definitions", "--host", "0.0.0.0", "--port", "3030"]
