# node_modules as an image layer for deploy/Dockerfile: build it with a folder holding the
# result of `npm ci --omit=dev` (package.json, package-lock.json, node_modules) as the context.
FROM scratch
COPY node_modules /node_modules
