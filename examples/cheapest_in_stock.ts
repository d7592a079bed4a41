// The three cheapest peripherals that are in stock: one search, then every stock check in parallel.
// Run: conduit run examples/cheapest_in_stock.ts --config examples/demo.yaml
type Product = { sku: string; name: string; price: number };

const found = await tools.catalog.search_products({ category: "peripherals" });
const products = (found.structuredContent as { products: Product[] }).products;

const stocked = await Promise.all(
  products.map(async (product) => {
    const stock = await tools.catalog.get_stock({ sku: product.sku });
    return { ...product, stock: (stock.structuredContent as { stock: number }).stock };
  }),
);

const cheapest = stocked
  .filter((product) => product.stock > 0)
  .sort((a, b) => a.price - b.price)
  .slice(0, 3);

for (const product of cheapest) {
  console.log(`${product.sku}  ${product.name.padEnd(20)} $${product.price.toFixed(2)}  (${product.stock} in stock)`);
}
return cheapest.map((product) => product.sku);
