// Runs cloudfront/viewer-request.js under node with a fake 'cloudfront' module (tests/test_cloudfront.py).
//
// stdin: {"source": "<path of the function>", "cases": [{"kvs": {"live": "..."} | null, "uri": "/x",
//         "querystring": {...}}, ...]}; "kvs": null makes every KVS read reject (an outage).
// stdout: one JSON array, per case {"result": <what handler returned>, "reads": [keys read]} or {"error": "..."}.
// The function is loaded once, so cases run in order against the same module: changing "kvs" between cases is
// a pointer moving between two viewer requests.
import { readFileSync } from 'node:fs';

const input = JSON.parse(readFileSync(0, 'utf8'));
const source = readFileSync(input.source, 'utf8');
const IMPORT = /^import cf from 'cloudfront';$/m;
if (!IMPORT.test(source)) {
    throw new Error("the function must start its module with: import cf from 'cloudfront';");
}

const store = { table: {}, reads: [] };
globalThis.__fakeCloudfront = {
    kvs() {
        return {
            async get(key, options) {
                store.reads.push(key);
                if (store.table === null) throw new Error('KVS unavailable');
                if (!Object.prototype.hasOwnProperty.call(store.table, key)) throw new Error(`key ${key} not found`);
                const value = store.table[key];
                return options && options.format === 'json' ? JSON.parse(value) : value;
            },
            async exists(key) {
                store.reads.push(`exists:${key}`);
                if (store.table === null) throw new Error('KVS unavailable');
                return Object.prototype.hasOwnProperty.call(store.table, key);
            },
        };
    },
};
const module = source.replace(IMPORT, 'const cf = globalThis.__fakeCloudfront;') + '\nexport { handler };\n';
const { handler } = await import('data:text/javascript;base64,' + Buffer.from(module).toString('base64'));

const results = [];
for (const c of input.cases) {
    store.table = c.kvs;
    store.reads = [];
    const event = {
        version: '1.0',
        context: { eventType: 'viewer-request', distributionId: 'EDFDVBD6EXAMPLE', requestId: 'test' },
        viewer: { ip: '192.0.2.1' },
        request: { method: 'GET', uri: c.uri, querystring: c.querystring || {}, headers: {}, cookies: {} },
    };
    try {
        results.push({ result: await handler(event), reads: store.reads });
    } catch (e) {
        results.push({ error: String(e && e.stack ? e.stack : e), reads: store.reads });
    }
}
process.stdout.write(JSON.stringify(results));
