// Sold-out products, and when the 16:30 UTC restock lands in Tokyo. Runs in a V8 isolate.
// Run: conduit run examples/restock_notice.js --config examples/demo.yaml
const found = await tools.catalog.search_products({});
const soldOut = [];
for (const product of found.structuredContent.products) {
  const stock = await tools.catalog.get_stock({ sku: product.sku });
  if (stock.structuredContent.stock === 0) soldOut.push(product.name);
}

const converted = await tools.time.convert_time({
  source_timezone: "Etc/UTC",
  time: "16:30",
  target_timezone: "Asia/Tokyo",
});
const tokyo = converted.target; // convert_time publishes an output schema: the call gives its value

console.log(`Sold out: ${soldOut.join(", ")}`);
console.log(`Restock at 16:30 UTC is ${tokyo.datetime.slice(11, 16)} in Tokyo.`);
return { soldOut, tokyo: tokyo.datetime.slice(11, 16) };
