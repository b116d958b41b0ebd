// Builds the page into dist/ with relative URLs, so the hub can serve it at
// any path (`promhub serve --www www/dist`).
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // `promhub` initializes its wasm with a top-level await.
    target: "es2022",
    chunkSizeWarningLimit: 1024,
  },
});
