// A loss curve as SVG: training loss as a line, validation loss (when measured) as dots, steps along x.
const NS = "http://www.w3.org/2000/svg";
const W = 300, H = 100, PAD = 4;

export function drawLoss(svg, points) {
  if (!svg) return;
  svg.setAttribute("class", "loss");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  const values = points.flatMap((p) => [p.train_loss, p.valid_loss]).filter((v) => v != null);
  if (!points.length || !values.length) return;
  const steps = points.map((p) => p.step);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  const [y0, y1] = [Math.min(...values), Math.max(...values)];
  const x = (step) => PAD + ((step - x0) / (x1 - x0 || 1)) * (W - 2 * PAD);
  const y = (loss) => H - PAD - ((loss - y0) / (y1 - y0 || 1)) * (H - 2 * PAD);
  const train = points.filter((p) => p.train_loss != null);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", train.map((p) => `${x(p.step)},${y(p.train_loss)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2457c5");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  line.dataset.points = String(train.length);
  svg.append(line);
  for (const p of points.filter((q) => q.valid_loss != null)) {
    const dot = document.createElementNS(NS, "circle");
    dot.setAttribute("cx", x(p.step));
    dot.setAttribute("cy", y(p.valid_loss));
    dot.setAttribute("r", "2");
    dot.setAttribute("fill", "#b3261e");
    svg.append(dot);
  }
  const title = document.createElementNS(NS, "title");
  const lastLoss = train.length ? train[train.length - 1].train_loss.toFixed(3) : "?";
  title.textContent = `loss ${values[0].toFixed(3)} → ${lastLoss}`;
  svg.append(title);
}
