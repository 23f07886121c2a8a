# CPU image of phi3bot. By default the serving image: the bot and OpenVINO, without the conversion extra, so no
# checkpoint's code (trust_remote_code) can run where the history is. With EXTRAS=convert, the conversion image:
# the conversion extra too, with PyTorch's CPU build of torch. Compose builds both (compose.yaml; the README's
# "Docker Compose" section); by hand:
#   docker build -t phi3bot .
#   docker run -d --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true --pids-limit 1024 \
#     --env-file .env -e DATA_DIR=/data -v phi3bot-data:/data -v "$PWD/secrets:/run/secrets:ro" phi3bot
#   (the token in secrets/telegram_bot_token, not in .env, so that `docker inspect` does not show it)
# Build arguments:
#   EXTRAS=convert  adds the conversion extra (about 1.2 GB more): the image can then convert a checkpoint; without
#                   it, it serves converted models and takes them with `convert --from-ir`.
#   TORCH_INDEX=    where torch and torchvision come from (alone; everything else comes from PyPI);
#                   scripts/pip_install.py falls back to PyPI's CUDA build of torch (about 4 GB more) when this
#                   index does not answer.

# The build stage installs into a virtual environment; the final stage copies only that, so the sources,
# pip's build trees and setuptools' build artefacts stay behind.
FROM python:3.11-slim-bookworm AS build
ARG EXTRAS=
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
COPY service service
RUN TORCH_INDEX="$TORCH_INDEX" /opt/phi3bot/bin/python scripts/pip_install.py ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/phi3bot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    HF_HOME=/data/huggingface
# A new named volume takes the owner of the directory it is mounted on: these three are where Compose mounts the
# history (/data), the model store (/models) and Hugging Face downloads (/downloads), writable by the bot's user.
RUN groupadd --gid 1000 phi3bot \
    && useradd --uid 1000 --gid 1000 --create-home phi3bot \
    && mkdir /data /models /downloads \
    && chown 1000:1000 /data /models /downloads
COPY --from=build /opt/phi3bot /opt/phi3bot
USER 1000:1000
WORKDIR /home/phi3bot
ENTRYPOINT ["phi3bot"]
CMD ["run"]
