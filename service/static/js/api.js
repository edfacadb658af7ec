// The page's only way to the server: same-origin fetches of the public API.
// The API key lives in this module's memory only (never in storage or the URL).

let apiKey = null;
let askKey = null; // (message, wasWrong) => Promise<string|null>, set by main.js
let pendingAsk = null; // one prompt shared by every request that got a 401

const HINTS = {
  0: "Check that `mcdrop serve` is still running and reload the page.",
  400: "The request was malformed; this is a bug in the page if it came from a button.",
  401: "The server needs an API key (the MCDROP_API_KEY it was started with).",
  404: "The model or route does not exist; reload the page to refresh the model list.",
  413: "The request is too large: send fewer rows.",
  415: "The server expects JSON.",
  422: "Change the input or the settings as the message says.",
  500: "The model failed on this input; the server log has the details.",
  503: "The model is not ready or is busy: retry in a moment.",
  504: "No answer in time: lower the number of samples S.",
};

/** An error answer of the API: HTTP status, the API's own message, and what to do. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.hint = HINTS[status] ?? (status >= 500 ? HINTS[500] : HINTS[422]);
  }
}

/** Install the function that asks the user for a key (returns null when cancelled). */
export function setKeyPrompt(fn) {
  askKey = fn;
}

async function promptKey(message) {
  if (!askKey) return null;
  if (!pendingAsk) {
    pendingAsk = askKey(message, apiKey !== null).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

/**
 * Call the API. Returns {data, ms} (ms: the round trip as the browser saw it).
 * Throws ApiError with the API's message for every non-2xx answer or network failure.
 */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const sentKey = apiKey;
    if (sentKey) headers.Authorization = `Bearer ${sentKey}`;
    const t0 = performance.now();
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      throw new ApiError(0, `the server could not be reached (${err.message})`);
    }
    const text = await res.text();
    const ms = performance.now() - t0;
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (res.ok) return { data, ms };
    const message =
      data && typeof data.error === "string" ? data.error : `${res.status} ${res.statusText}`;
    if (res.status === 401) {
      // Another request may have set a new key while this one was in flight.
      if (apiKey !== sentKey) continue;
      const key = await promptKey(message);
      if (key) {
        apiKey = key;
        continue;
      }
    }
    throw new ApiError(res.status, message);
  }
}

/** POST /v1/models/{name}/predict with {inputs, samples, seed?}. */
export function predict(name, inputs, { samples, seed } = {}) {
  const body = { inputs };
  if (samples !== undefined && samples !== null) body.samples = samples;
  if (seed !== undefined && seed !== null) body.seed = seed;
  return api(`/v1/models/${encodeURIComponent(name)}/predict`, { method: "POST", body });
}
