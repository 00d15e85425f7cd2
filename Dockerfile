# One image for every Relay process: `relay api`, `relay worker`, `relay sandbox`, `relay migrate`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 RELAY_LOG_FORMAT=json
WORKDIR /app
COPY pyproject.toml README.md schema.sql ./
COPY relay ./relay
COPY workers ./workers
RUN pip install --no-cache-dir -e . && useradd --system relay
USER relay
ENTRYPOINT ["relay"]
CMD ["--help"]
