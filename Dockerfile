# syntax=docker/dockerfile:1
#
# Edgeward edge runtime.
#
#   docker build -t edgeward .
#   docker run -d --init --name edgeward \
#     -p 1880:1880 \
#     -v edgeward-data:/data \
#     -v /etc/edgeward:/config \
#     --device /dev/ttyUSB0 \
#     -e EDGEWARD_TOKEN -e EDGEWARD_SITE_KEY -e EDGEWARD_MQTT_PASSWORD \
#     edgeward
#
# The site config is /config/site.yaml. In a container set `dataDir: /data`
# (the volume: outbox and Node-RED user dir) and
# `http.host: 0.0.0.0` (which the config only accepts with `http.token` and
# `nodeRed.adminAuth`). Node-RED writes deploys back to `nodeRed.flowFile`:
# keep it on a writable mount (/config or /data). The health check probes
# EDGEWARD_HEALTH_URL (default http://127.0.0.1:1880/healthz): with another
# `http.port`, or `http.host` set to one interface's address, pass
# `-e EDGEWARD_HEALTH_URL=http://<host>:<port>/healthz`.

# ---- build: all dependencies, compile TypeScript, then drop dev dependencies
FROM node:20-bookworm-slim AS build
WORKDIR /app
# serialport and classic-level ship prebuilt binaries; the toolchain is only
# the fallback for a dependency that has to compile (node-gyp).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# ---- runtime: compiled code, production node_modules, and the plain files read at run time
FROM node:20-bookworm-slim
ENV NODE_ENV=production
ENV EDGEWARD_HEALTH_URL=http://127.0.0.1:1880/healthz
# glibc: allocations of 64 KiB and more straight from mmap, a fixed threshold
# (glibc raises its own as blocks are freed). Reading large events back from
# LevelDB (100 KB camera payloads) left the heap fragmented and never given
# back: 912 MB drained took RSS from 205 to 750 MB; 456 MB read, 122 -> 329 MB
# anonymous memory, 315 MB after close; with this, 80 MB (measured). It costs
# small-event appends ~7 % (mmap for each ~240 KB write batch).
ENV MALLOC_MMAP_THRESHOLD_=65536
WORKDIR /app
# Serial ports (RS-485 adapters, card readers, Firmata boards) belong to group dialout.
RUN groupadd --system edgeward \
 && useradd --system --gid edgeward --groups dialout --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin edgeward \
 && mkdir -p /data /config \
 && chown edgeward:edgeward /data
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# Read from the source layout at run time (the build does not copy them into dist):
# Node-RED nodes (.js + .html), the default and demo flows, device profiles.
COPY --from=build /app/edge/nodes ./edge/nodes
COPY --from=build /app/flows ./flows
COPY --from=build /app/hardware/profiles ./hardware/profiles
USER edgeward
VOLUME ["/data"]
EXPOSE 1880
# No curl in the slim image: Node 20's fetch does the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.EDGEWARD_HEALTH_URL).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/edge/cli.js", "start", "-c", "/config/site.yaml"]
