// CloudFront Function (viewer request, runtime cloudfront-js-2.0) for a site published by `publisher` to S3.
//
// It maps each viewer URI to the live release's objects in the bucket (DESIGN §5), reading the KeyValueStore
// associated with the function:
//   live    (required)  the live release's name, e.g. 20261201T150000-b12-a1; the publisher writes it at each
//                       cutover and rollback (live.json in the bucket stays the source of truth)
//   prefix  (optional)  the bucket key prefix, the same as SITE_S3_PREFIX (e.g. "site" or "site/"); absent = none
//
//   /                       -> /<prefix>releases/<live>/index.html
//   /about/                 -> /<prefix>releases/<live>/about/index.html
//   /sitemap.xml            -> /<prefix>releases/<live>/sitemap.xml
//   /assets/<hash>/site.css -> /<prefix>assets/<hash>/site.css   (content-addressed, shared by all releases)
//   /about                  -> 301 to /about/ (query string kept): page links are relative, so a page must be
//                              seen at its folder's URL
//   a ".." or "." segment   -> 400
//   KVS read fails, or a value is malformed -> 503 (never a guess at which release is live)
//
// The query string is left untouched. The cache key follows the rewritten URI, so a new live release is a new set of
// cache entries: a cutover needs no invalidation. Keep this file under CloudFront Functions' 10 KB limit.
import cf from 'cloudfront';

const kvsHandle = cf.kvs();

const RELEASE = /^\d{8}T\d{6}-b\d+-a\d+$/;
const PREFIX = /^[A-Za-z0-9._\-/]*$/;

function reply(statusCode, statusDescription, headers) {
    const response = { statusCode: statusCode, statusDescription: statusDescription, headers: headers || {} };
    response.headers['cache-control'] = response.headers['cache-control'] || { value: 'no-store' };
    return response;
}

function unavailable() {
    return reply(503, 'Service Unavailable', { 'retry-after': { value: '5' } });
}

function queryString(querystring) {
    const parts = [];
    for (const name in querystring) {
        const item = querystring[name];
        const values = item.multiValue ? item.multiValue : [item];
        for (let i = 0; i < values.length; i++) {
            parts.push(values[i].value === '' ? name : name + '=' + values[i].value);
        }
    }
    return parts.length ? '?' + parts.join('&') : '';
}

// "site", "/site/", "site/" -> "site/"; "" -> ""; null when it could escape or is not a plain key prefix.
function normalPrefix(value) {
    const text = String(value).replace(/^\/+/, '').replace(/\/+$/, '');
    if (!PREFIX.test(text) || text.split('/').some((s) => s === '..' || s === '.')) {
        return null;
    }
    return text ? text + '/' : '';
}

async function handler(event) {
    const request = event.request;
    const uri = request.uri || '/';
    const segments = uri.split('/');
    for (let i = 0; i < segments.length; i++) {
        let segment;
        try {
            segment = decodeURIComponent(segments[i]);
        } catch (e) {
            return reply(400, 'Bad Request');
        }
        if (segment === '..' || segment === '.' || segment.indexOf('/') !== -1 || segment.indexOf('\\') !== -1) {
            return reply(400, 'Bad Request');
        }
    }
    const last = segments[segments.length - 1];
    if (last !== '' && last.indexOf('.') === -1) {
        return reply(301, 'Moved Permanently', {
            location: { value: uri + '/' + queryString(request.querystring) },
            'cache-control': { value: 'max-age=3600' },
        });
    }

    let live;
    let prefix = '';
    try {
        live = await kvsHandle.get('live');
        if (await kvsHandle.exists('prefix')) {
            prefix = await kvsHandle.get('prefix');
        }
    } catch (e) {
        return unavailable();
    }
    prefix = normalPrefix(prefix);
    if (typeof live !== 'string' || !RELEASE.test(live) || prefix === null) {
        return unavailable();
    }

    const path = uri.endsWith('/') ? uri + 'index.html' : uri;
    if (path.startsWith('/assets/')) {
        request.uri = '/' + prefix + path.slice(1);
    } else {
        request.uri = '/' + prefix + 'releases/' + live + path;
    }
    return request;
}
