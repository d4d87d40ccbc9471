# hanbot's container image: the bot (`python -m bot`, default command `serve`) on Python 3.11.
#   docker build -t hanbot .                          # CUDA: torch from PyPI (its CUDA build), for GPU hosts
#   docker build -t hanbot:cpu --build-arg VARIANT=cpu .   # CPU-only torch: remote engine or the demo model
# The image holds no model weights and no secrets: mount /data (database, LoRA versions, Hugging Face cache) and pass
# the environment (.env.example). Runs as an unprivileged user; /metrics, /health and /ready on port 9464.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HANBOT_DATA_DIR=/data \
    HANBOT_OPS__HOST=0.0.0.0 \
    HANBOT_OPS__PORT=9464 \
    HF_HOME=/data/huggingface

RUN useradd --create-home --uid 10001 hanbot && mkdir /data && chown hanbot /data
WORKDIR /app

# torch first and pinned (the CPU index has the small CPU-only build), then the project at the locked versions
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
    elif [ "$VARIANT" = "cuda" ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    else \
        echo "VARIANT must be cpu or cuda, not ${VARIANT}" >&2; exit 2; \
    fi
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY bot ./bot
COPY adapters ./adapters
COPY inference ./inference
COPY migrations ./migrations
RUN pip install --no-cache-dir -c constraints.txt ".[discord,slack,local]"

USER hanbot
VOLUME ["/data"]
EXPOSE 9464 3000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/health', timeout=5)"
ENTRYPOINT ["python", "-m", "bot"]
CMD ["serve"]
