// Offline-first devices for tandem's tests: real kinto.js clients (the library Kinto's users
// sync with) over fake-indexeddb, kept alive in one Node process while a test destroys and
// restores servers around them.
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout, in order.
//   {"cmd": "sync",   "device", "remote", "user", "password", "bucket", "collection"}
//   {"cmd": "create", "device", "bucket", "collection", "data"}         -> {"id"}
//   {"cmd": "update", "device", "bucket", "collection", "data"}         (data has the id)
//   {"cmd": "delete", "device", "bucket", "collection", "id"}
//   {"cmd": "list",   "device", "bucket", "collection"}                 -> {"records"}
//   {"cmd": "cursor", "device", "bucket", "collection"}                 -> {"cursor"}
//   {"cmd": "reset",  "device", "bucket", "collection"}                 (resetSyncStatus)
// Every answer has "ok"; a failed command answers {"ok": false, "error": <name>, "message"}.
// A sync answers {"ok": true, "conflicts", "resolved", "errors", "published", "created",
// "updated", "deleted"} (counts) when kinto.js reports success. The devices resolve
// conflicts with SERVER_WINS, which moves them from "conflicts" to "resolved".
import "fake-indexeddb/auto";
import kinto from "kinto";

// The package is CommonJS: its default export is the module object.
const Kinto = kinto.default || kinto;
import { createInterface } from "node:readline";

const devices = new Map();

function collection(cmd) {
  let db = devices.get(cmd.device);
  if (!db) {
    // Each device its own IndexedDB database (kinto.js names it through the adapter options).
    db = new Kinto({ adapterOptions: { dbName: cmd.device }, remote: cmd.remote || "http://127.0.0.1:1/v1" });
    devices.set(cmd.device, db);
  }
  return db.collection(cmd.collection, { bucket: cmd.bucket });
}

async function run(cmd) {
  const coll = collection(cmd);
  switch (cmd.cmd) {
    case "sync": {
      const auth = "Basic " + Buffer.from(`${cmd.user}:${cmd.password}`).toString("base64");
      const result = await coll.sync({
        remote: cmd.remote,
        headers: { Authorization: auth },
        strategy: Kinto.syncStrategy.SERVER_WINS,
      });
      return {
        ok: result.ok,
        conflicts: result.conflicts.length,
        resolved: result.resolved.length,
        errors: result.errors.map((e) => String(e.error && e.error.message ? e.error.message : JSON.stringify(e))),
        published: result.published.length,
        created: result.created.length,
        updated: result.updated.length,
        deleted: result.deleted.length,
      };
    }
    case "create": {
      const { data } = await coll.create(cmd.data);
      return { ok: true, id: data.id };
    }
    case "update":
      await coll.update(cmd.data);
      return { ok: true };
    case "delete":
      await coll.delete(cmd.id);
      return { ok: true };
    case "list": {
      const { data } = await coll.list();
      const records = data
        .map(({ _status, ...record }) => record)
        .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      return { ok: true, records };
    }
    case "cursor":
      return { ok: true, cursor: await coll.db.getLastModified() };
    case "reset":
      await coll.resetSyncStatus();
      return { ok: true };
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = await run(JSON.parse(line));
  } catch (e) {
    // kinto.js's errors keep the generic name "Error": their class says what they are.
    const name = e.constructor && e.constructor.name !== "Error" ? e.constructor.name : e.name;
    answer = { ok: false, error: name || "Error", message: String(e.message || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
