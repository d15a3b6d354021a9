// Times bench/decision-v8's parts in Node's V8: node run.mjs MODULE.wasm [LABEL]. Prints one
// JSON object: the V8 version and, per part and user population, the median over 9 timings
// of microseconds per request (after a warm-up that lets V8 tier up).
import fs from 'fs';

const PARTS = [
  [0, 'find_route'],
  [1, 'decide, unsigned cookies'],
  [2, 'decide, signed cookies'],
  [3, 'sign one new cookie (encode_cookie_value)'],
];
// About 200,000 requests per timing.
const PER_TIMING = 200000;

const [, , path, label] = process.argv;
const { instance } = await WebAssembly.instantiate(fs.readFileSync(path), {});
const e = instance.exports;
const out = { module: label || path, v8: process.versions.v8, node: process.version, parts: [] };
// 800 returning users (the gateway benchmark's 1,000-user mix) fit a 4096-slot memory of
// verified cookies but not a 256-slot one; 20,000 fit neither.
for (const users of [800, 20000]) {
  if (e.setup(users) !== 1) throw new Error('setup refused the table or the key');
  const requests = e.requests_built();
  const reps = Math.max(1, Math.round(PER_TIMING / requests));
  for (const [part, name] of PARTS) {
    if (users !== 800 && part !== 2) continue;
    e.run(part, reps);
    const times = [];
    for (let i = 0; i < 9; i++) {
      const t0 = process.hrtime.bigint();
      e.run(part, reps);
      times.push(Number(process.hrtime.bigint() - t0) / 1000 / (reps * requests));
    }
    times.sort((a, b) => a - b);
    out.parts.push({ part: name, returning_users: users, us_per_request: times[4], min: times[0], max: times[8] });
  }
}
console.log(JSON.stringify(out));
