# CPU image of phi3bot. Build:  docker build -t phi3bot .
# Run:    docker run --env-file .env -v phi3bot-data:/data phi3bot
# Convert a model into the volume first:
#         docker run --env-file .env -v phi3bot-data:/data phi3bot convert --model microsoft/Phi-3.5-vision-instruct
# To fetch the smaller CPU-only torch wheels, pass PyTorch's CPU wheel index as a build argument:
#         docker build --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU index URL> -t phi3bot .
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    HF_HOME=/data/huggingface

RUN useradd --create-home --uid 1000 phi3bot && mkdir -p /data && chown phi3bot /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY model_store ./model_store
COPY engine ./engine
RUN pip install ".[convert]"

USER phi3bot
VOLUME ["/data"]
ENTRYPOINT ["phi3bot"]
CMD ["run"]
