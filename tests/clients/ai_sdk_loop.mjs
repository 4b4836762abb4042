// The Vercel AI SDK's default OpenAI provider (the Responses API, store on) in a tool
// loop through the gateway: the model runs the shell tool twice, then answers.
// Prints one JSON line: the final text, the number of steps and the tool outputs.
import { execSync } from "node:child_process";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, stepCountIs, tool } from "ai";
import { z } from "zod";

const provider = createOpenAI({
  baseURL: process.env.RUNESTONE_BASE_URL,
  apiKey: process.env.RUNESTONE_TOKEN,
});
const shell = tool({
  description: "Run a shell command and return what it printed.",
  inputSchema: z.object({ command: z.string() }),
  execute: async ({ command }) => execSync(command, { shell: "/bin/bash" }).toString(),
});
const options = {
  model: provider(process.env.RUNESTONE_MODEL),
  tools: { shell },
  stopWhen: stepCountIs(5),
  prompt: "Run the command twice, then tell me what it printed.",
};
let result;
if (process.env.RUNESTONE_STREAM === "1") {
  const streamed = streamText(options);
  let text = "";
  for await (const part of streamed.textStream) text += part;
  result = { text, steps: (await streamed.steps).length, toolResults: (await streamed.steps).flatMap((s) => s.toolResults.map((r) => r.output)) };
} else {
  const done = await generateText(options);
  result = { text: done.text, steps: done.steps.length, toolResults: done.steps.flatMap((s) => s.toolResults.map((r) => r.output)) };
}
console.log(JSON.stringify(result));
