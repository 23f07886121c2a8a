# CPU image of phi3bot: the bot, OpenVINO, and the conversion extra with PyTorch's CPU build of torch.
# Start it with Compose (compose.yaml; the README's "Docker Compose" section), or by hand:
#   docker build -t phi3bot .
#   docker run -d --env-file .env -e DATA_DIR=/data -v phi3bot-data:/data phi3bot
# Build arguments:
#   EXTRAS=        leaves the conversion extra out (about 1.2 GB less): the image then serves converted
#                  models and takes them with `convert --from-ir`, but cannot convert a checkpoint.
#   TORCH_INDEX=   where torch comes from; scripts/pip_install.py falls back to PyPI's CUDA build of torch
#                  (about 4 GB more) when this index does not answer.

# The build stage installs into a virtual environment; the final stage copies only that, so the sources,
# pip's build trees and setuptools' build artefacts stay behind.
FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=convert
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/phi3bot
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/pip_install.py scripts/
COPY bot bot
COPY engine engine
COPY model_store model_store
RUN TORCH_INDEX="$TORCH_INDEX" /opt/phi3bot/bin/python scripts/pip_install.py ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/phi3bot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    HF_HOME=/data/huggingface
RUN groupadd --gid 1000 phi3bot \
    && useradd --uid 1000 --gid 1000 --create-home phi3bot \
    && mkdir /data \
    && chown 1000:1000 /data
COPY --from=build /opt/phi3bot /opt/phi3bot
USER 1000:1000
WORKDIR /home/phi3bot
VOLUME ["/data"]
ENTRYPOINT ["phi3bot"]
CMD ["run"]
