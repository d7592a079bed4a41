// A second, independent MCP client for Conduit's tests: the official TypeScript SDK.
// Usage: node client.cjs SDK_DIR stdio COMMAND [ARG...]
//        node client.cjs SDK_DIR http URL TOKEN
// Connects, lists tools, runs one TypeScript execution that calls an upstream tool, and prints
// {"tools": [...names], "result": <the execution's structured result>} as JSON on stdout.
"use strict";
const { createRequire } = require("node:module");
const path = require("node:path");

async function main() {
  const [sdkDir, mode, ...rest] = process.argv.slice(2);
  const sdk = createRequire(path.join(path.resolve(sdkDir), "package.json"));
  const { Client } = sdk("@modelcontextprotocol/sdk/client/index.js");
  let transport;
  if (mode === "stdio") {
    const { StdioClientTransport } = sdk("@modelcontextprotocol/sdk/client/stdio.js");
    transport = new StdioClientTransport({ command: rest[0], args: rest.slice(1), env: process.env, stderr: "inherit" });
  } else if (mode === "http") {
    const { StreamableHTTPClientTransport } = sdk("@modelcontextprotocol/sdk/client/streamableHttp.js");
    transport = new StreamableHTTPClientTransport(new URL(rest[0]), {
      requestInit: { headers: { Authorization: `Bearer ${rest[1]}` } },
    });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  const client = new Client({ name: "conduit-ts-sdk-test", version: "1.0.0" });
  await client.connect(transport);
  const listed = await client.listTools();
  const executed = await client.callTool({
    name: "conduit__mcp_execute_typescript",
    arguments: {
      code: 'const r = await tools.toolbox.add({ a: 40, b: 2 });\nconsole.log("sum", r.structuredContent.sum);\nreturn r.structuredContent;',
    },
  });
  console.log(JSON.stringify({ tools: listed.tools.map((tool) => tool.name), isError: executed.isError, result: executed.structuredContent }));
  await client.close();
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
