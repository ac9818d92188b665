// What a Node user of the official openai SDK does against aistack's gateway, every check in
// one process. Reads GATEWAY_URL (the gateway's /v1 base), API_KEY, LIMITED_KEY (a key allowed
// one request a minute), SCOPED_KEY (a key without llm:use) and BAD_KEY. Prints one JSON
// document, {check: result}, where a check that threw is {"threw": {...the error as the SDK
// gives it...}}. Arguments, if any, name the checks to run (all by default).
import OpenAI from 'openai';

const base = process.env.GATEWAY_URL;
const client = (apiKey) => new OpenAI({ baseURL: base, apiKey, maxRetries: 0, timeout: 20_000 });
const sdk = client(process.env.API_KEY);
const hi = [{ role: 'user', content: 'Say hello' }];
const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
    },
  },
};

function describe(err) {
  return {
    class: err?.constructor?.name,
    isAPIError: err instanceof OpenAI.APIError,
    status: err?.status ?? null,
    type: err?.type ?? null,
    code: err?.code ?? null,
    param: err?.param ?? null,
    message: err?.message ?? String(err),
    requestID: err?.requestID ?? null,
    retryAfter: err?.headers?.get?.('retry-after') ?? null,
  };
}

// the weather tool as runTools wants it: parsed arguments in, `answer(args)` out, each call kept
function runnableWeather(called, answer) {
  return {
    type: 'function',
    function: {
      ...weatherTool.function,
      parse: JSON.parse,
      function: (args) => {
        called.push(args);
        return answer(args);
      },
    },
  };
}

const checks = {
  async chat() {
    const { data, response, request_id } = await sdk.chat.completions
      .create({ model: 'default', messages: hi, max_tokens: 20 })
      .withResponse();
    return {
      object: data.object,
      id: data.id,
      model: data.model,
      content: data.choices[0].message.content,
      role: data.choices[0].message.role,
      finish_reason: data.choices[0].finish_reason,
      usage: data.usage,
      request_id: data._request_id,
      with_response_request_id: request_id,
      header_request_id: response.headers.get('x-request-id'),
    };
  },

  async chat_tools() {
    const data = await sdk.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [weatherTool],
      tool_choice: 'auto',
    });
    const message = data.choices[0].message;
    return {
      finish_reason: data.choices[0].finish_reason,
      content: message.content,
      tool_calls: message.tool_calls.map((c) => ({
        id: c.id,
        type: c.type,
        name: c.function.name,
        arguments: JSON.parse(c.function.arguments),
      })),
    };
  },

  async chat_stream() {
    const { data: stream, request_id } = await sdk.chat.completions
      .create({ model: 'default', messages: hi, stream: true, stream_options: { include_usage: true } })
      .withResponse();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks[chunks.length - 1];
    return {
      count: chunks.length,
      objects: [...new Set(chunks.map((c) => c.object))],
      ids: [...new Set(chunks.map((c) => c.id))],
      text: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''),
      finish_reasons: chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
      usage_only_on_last: chunks.slice(0, -1).every((c) => !c.usage),
      last_choices: last.choices,
      last_usage: last.usage,
      request_id,
    };
  },

  async chat_stream_tools() {
    const stream = await sdk.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [weatherTool],
      stream: true,
    });
    const calls = {};
    let finish = null;
    for await (const chunk of stream) {
      for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) {
        const slot = (calls[d.index] ??= { id: null, name: '', arguments: '' });
        slot.id = d.id ?? slot.id;
        slot.name += d.function?.name ?? '';
        slot.arguments += d.function?.arguments ?? '';
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    return {
      finish_reason: finish,
      tool_calls: Object.values(calls).map((c) => ({ ...c, arguments: JSON.parse(c.arguments) })),
    };
  },

  async chat_stream_helper() {
    const deltas = [];
    const runner = sdk.chat.completions
      .stream({ model: 'default', messages: hi, stream_options: { include_usage: true } })
      .on('content.delta', (e) => deltas.push(e.delta));
    const final = await runner.finalChatCompletion();
    return {
      deltas: deltas.length,
      text: deltas.join(''),
      content: final.choices[0].message.content,
      finish_reason: final.choices[0].finish_reason,
      usage: final.usage ?? null,
    };
  },

  async run_tools() {
    const called = [];
    const runner = sdk.chat.completions.runTools({
      model: 'default',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [runnableWeather(called, (args) => ({ city: args.city, forecast: 'sunny' }))],
    });
    const content = await runner.finalContent();
    return {
      called,
      content,
      roles: runner.messages.map((m) => m.role),
      completions: runner.allChatCompletions().length,
    };
  },

  async run_tools_stream() {
    const called = [];
    const runner = sdk.chat.completions.runTools({
      model: 'default',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      stream: true,
      tools: [runnableWeather(called, () => 'sunny')],
    });
    const content = await runner.finalContent();
    return { called, content, roles: runner.messages.map((m) => m.role) };
  },

  async chat_parse() {
    // structured output: the SDK's parse helper over a json_schema response_format
    const data = await sdk.chat.completions.parse({
      model: 'default',
      messages: [{ role: 'user', content: 'Weather in Paris as JSON' }],
      response_format: {
        type: 'json_schema',
        json_schema: {
          name: 'weather',
          strict: true,
          schema: {
            type: 'object',
            properties: { city: { type: 'string' }, forecast: { type: 'string' } },
            required: ['city', 'forecast'],
            additionalProperties: false,
          },
        },
      },
    });
    return { parsed: data.choices[0].message.parsed, refusal: data.choices[0].message.refusal };
  },

  async embeddings() {
    // no encoding_format: the SDK asks for base64 and decodes it to numbers
    const data = await sdk.embeddings.create({ model: 'embed', input: ['one', 'two', 'three'] });
    return {
      object: data.object,
      model: data.model,
      usage: data.usage,
      items: data.data.map((d) => ({
        index: d.index,
        object: d.object,
        is_array: Array.isArray(d.embedding),
        vector: d.embedding,
      })),
      request_id: data._request_id,
    };
  },

  async embeddings_float() {
    const data = await sdk.embeddings.create({
      model: 'embed',
      input: 'one',
      encoding_format: 'float',
    });
    return { vector: data.data[0].embedding };
  },

  async embeddings_base64_raw() {
    // asked for base64 explicitly, the SDK hands the string over as is
    const data = await sdk.embeddings.create({
      model: 'embed',
      input: 'one',
      encoding_format: 'base64',
    });
    const raw = Buffer.from(data.data[0].embedding, 'base64');
    const floats = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    return { type: typeof data.data[0].embedding, vector: Array.from(floats) };
  },

  async models_list() {
    const ids = [];
    for await (const model of sdk.models.list()) ids.push(model.id);
    const page = await sdk.models.list();
    return {
      ids,
      object: page.object ?? null,
      first: page.data[0],
      has_next_page: page.hasNextPage(),
    };
  },

  async models_retrieve() {
    const model = await sdk.models.retrieve('default');
    return { id: model.id, object: model.object, owned_by: model.owned_by, created: model.created };
  },

  async completions() {
    const data = await sdk.completions.create({ model: 'default', prompt: 'Say hello', max_tokens: 20 });
    return {
      object: data.object,
      text: data.choices[0].text,
      finish_reason: data.choices[0].finish_reason,
      usage: data.usage,
      request_id: data._request_id,
    };
  },

  async completions_stream() {
    const stream = await sdk.completions.create({
      model: 'default',
      prompt: 'Say hello',
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return {
      text: chunks.map((c) => c.choices[0]?.text ?? '').join(''),
      last_usage: chunks[chunks.length - 1].usage ?? null,
    };
  },

  async responses() {
    const response = await sdk.responses.create({ model: 'default', input: 'Say hello' });
    return {
      object: response.object,
      status: response.status,
      output_text: response.output_text,
      usage: response.usage,
      request_id: response._request_id,
    };
  },

  async responses_stream() {
    const stream = await sdk.responses.create({ model: 'default', input: 'Say hello', stream: true });
    const types = [];
    let text = '';
    let completed = null;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.output_text.delta') text += event.delta;
      if (event.type === 'response.completed') completed = event.response;
    }
    const parts = (completed?.output ?? []).flatMap((item) => item.content ?? []);
    return {
      first: types[0],
      last: types[types.length - 1],
      text,
      completed_text: parts.map((p) => p.text ?? '').join(''),
    };
  },

  async responses_stream_helper() {
    const runner = sdk.responses.stream({ model: 'default', input: 'Say hello' });
    let deltas = 0;
    runner.on('response.output_text.delta', () => deltas++);
    const final = await runner.finalResponse();
    return { deltas, output_text: final.output_text, status: final.status };
  },

  async responses_stored() {
    // a stored response: retrieve it, chain on it, page its input items, delete it
    const first = await sdk.responses.create({
      model: 'default',
      input: [
        { role: 'user', content: 'Say hello' },
        { role: 'user', content: 'and goodbye' },
      ],
    });
    const again = await sdk.responses.retrieve(first.id);
    const next = await sdk.responses.create({
      model: 'default',
      input: 'Once more',
      previous_response_id: first.id,
    });
    const items = [];
    for await (const item of sdk.responses.inputItems.list(first.id, { limit: 1, order: 'asc' })) {
      items.push({ id: item.id, type: item.type, role: item.role, text: item.content?.[0]?.text });
    }
    let page = await sdk.responses.inputItems.list(first.id, { limit: 1, order: 'asc' });
    let pages = 1;
    while (page.hasNextPage()) {
      page = await page.getNextPage();
      pages++;
    }
    const deleted = await sdk.responses.delete(first.id);
    let afterDelete = null;
    try {
      await sdk.responses.retrieve(first.id);
    } catch (err) {
      afterDelete = describe(err);
    }
    return {
      id: first.id,
      retrieved_id: again.id,
      retrieved_output_text: again.output_text,
      next_previous_response_id: next.previous_response_id,
      items,
      pages,
      deleted: deleted ?? null,
      after_delete: afterDelete,
    };
  },

  async error_bad_key() {
    await client(process.env.BAD_KEY).chat.completions.create({ model: 'default', messages: hi });
  },

  async error_missing_scope() {
    await client(process.env.SCOPED_KEY).embeddings.create({ model: 'embed', input: 'x' });
  },

  async error_unknown_model() {
    await sdk.chat.completions.create({ model: 'no-such-model', messages: hi });
  },

  async error_unknown_model_retrieve() {
    await sdk.models.retrieve('no-such-model');
  },

  async error_unknown_model_embeddings() {
    await sdk.embeddings.create({ model: 'no-such-model', input: 'x' });
  },

  async error_bad_param() {
    await sdk.chat.completions.create({ model: 'default', messages: hi, temperature: 5 });
  },

  async error_bad_type() {
    await sdk.chat.completions.create({ model: 'default', messages: hi, max_tokens: 'many' });
  },

  async error_missing_param() {
    await sdk.chat.completions.create({ model: 'default' });
  },

  async error_stream_unknown_model() {
    const stream = await sdk.chat.completions.create({ model: 'no-such-model', messages: hi, stream: true });
    for await (const _ of stream);
  },

  async error_mid_stream() {
    // the upstream drops the stream after its first chunks: the SDK raises from the loop
    const stream = await sdk.chat.completions.create({
      model: 'default',
      messages: [{ role: 'user', content: 'BREAK after a few words' }],
      stream: true,
    });
    let text = '';
    try {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    } catch (err) {
      return { text, threw_in_loop: describe(err) };
    }
    return { text, threw_in_loop: null };
  },

  async error_mid_stream_responses() {
    const stream = await sdk.responses.create({
      model: 'default',
      input: 'BREAK after a few words',
      stream: true,
    });
    const types = [];
    try {
      for await (const event of stream) types.push(event.type);
    } catch (err) {
      return { types, threw_in_loop: describe(err) };
    }
    return { types, threw_in_loop: null };
  },

  async error_rate_limited() {
    const limited = client(process.env.LIMITED_KEY);
    await limited.models.list();
    await limited.chat.completions.create({ model: 'default', messages: hi });
  },
};

const only = process.argv.slice(2);
const out = { _ms: {} };
for (const [name, check] of Object.entries(checks)) {
  if (only.length && !only.includes(name)) continue;
  const started = performance.now();
  try {
    const value = await check();
    out[name] = value === undefined ? { returned: true } : value;
  } catch (err) {
    out[name] = { threw: describe(err) };
  }
  out._ms[name] = Math.round(performance.now() - started);
}
process.stdout.write(JSON.stringify(out) + '\n');
