// The Node reference DS server (@durable-streams/server) for the DS server matrix of the
// integration tests: `node ds-server.mjs PORT DATA_DIR` serves on 127.0.0.1:PORT, keeping
// streams in DATA_DIR (file-backed, so a restart keeps them). Started by the test kit
// (tests/integration/kit/ds_server.rs).
import { DurableStreamTestServer } from "@durable-streams/server";

const [port, dataDir] = process.argv.slice(2);
const server = new DurableStreamTestServer({
  host: "127.0.0.1",
  port: Number(port),
  dataDir,
  longPollTimeout: 2000,
});
const url = await server.start();
console.log(`listening on ${url}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    await server.stop();
    process.exit(0);
  });
}
