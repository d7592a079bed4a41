# Units in stock per category, from one search per category and one stock check per product.
# Run: conduit run examples/stock_report.py --config examples/demo.yaml
import asyncio

categories = ["peripherals", "displays", "cables"]
report = {}
for category in categories:
    found = await tools.catalog.search_products(category=category)
    products = found["structuredContent"]["products"]
    stocks = await asyncio.gather(*(tools.catalog.get_stock(sku=p["sku"]) for p in products))
    units = [s["structuredContent"]["stock"] for s in stocks]
    report[category] = {"products": len(products), "units": sum(units), "sold_out": units.count(0)}

for category, row in report.items():
    print(f"{category:<12} {row['products']} products  {row['units']:>4} units  {row['sold_out']} sold out")
report
