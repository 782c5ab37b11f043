// Calls appliance.v1.Inference/Generate with a client generated from the .proto files by
// grpc-js / proto-loader, and prints one JSON line per streamed message.
// Usage: node generate.js PROTO_ROOT HOST:PORT MODEL PROMPT MAX_TOKENS
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protoRoot, target, model, prompt, maxTokens] = process.argv.slice(2);
const definition = protoLoader.loadSync("appliance/v1/inference.proto", {
  includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).appliance.v1;
const client = new v1.Inference(target, grpc.credentials.createInsecure());
const call = client.Generate({ model, prompt, max_tokens: Number(maxTokens), ignore_eos: true });
call.on("data", (message) => console.log(JSON.stringify(message)));
call.on("error", (error) => { console.error(`${error.code} ${error.details}`); process.exit(1); });
call.on("end", () => client.close());
