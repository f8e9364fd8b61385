// Decodes gzip'd pprof files with the npm pprof-format decoder and prints, as JSON, what the
// tests assert on: types, mappings, and every sample with its stack as function names and labels.
// Usage: node decode_pprof.mjs NODE_MODULES_DIR FILE...
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { createRequire } from "node:module";
import { join } from "node:path";

const [modules, ...files] = process.argv.slice(2);
const require = createRequire(join(modules, "noop.js"));
const { Profile } = require("pprof-format");

function describe(path) {
  const profile = Profile.decode(gunzipSync(readFileSync(path)));
  const text = (index) => profile.stringTable.strings[Number(index)];
  const functions = new Map(profile.function.map((f) => [String(f.id), f]));
  const locations = new Map(profile.location.map((l) => [String(l.id), l]));
  const frame = (id) => {
    const location = locations.get(String(id));
    const line = location.line[location.line.length - 1];
    return line ? text(functions.get(String(line.functionId)).name) : `0x${location.address.toString(16)}`;
  };
  return {
    sampleTypes: profile.sampleType.map((t) => [text(t.type), text(t.unit)]),
    periodType: [text(profile.periodType.type), text(profile.periodType.unit)],
    period: Number(profile.period),
    timeNanos: String(profile.timeNanos),
    durationNanos: String(profile.durationNanos),
    mappings: profile.mapping.map((m) => ({
      id: Number(m.id),
      start: String(m.memoryStart),
      limit: String(m.memoryLimit),
      offset: String(m.fileOffset),
      file: text(m.filename),
      buildId: text(m.buildId),
      hasFunctions: Boolean(m.hasFunctions),
    })),
    functions: profile.function.map((f) => ({ name: text(f.name), systemName: text(f.systemName) })),
    samples: profile.sample.map((s) => ({
      stack: s.locationId.map(frame),
      values: s.value.map(Number),
      labels: Object.fromEntries(s.label.map((l) => [text(l.key), Number(l.str) ? text(l.str) : Number(l.num)])),
    })),
  };
}

process.stdout.write(JSON.stringify(files.map(describe)));
