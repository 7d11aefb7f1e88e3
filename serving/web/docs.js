// The API docs page at "/": BentoML's bundled Swagger UI on this service's /docs.json, without the tag manager
// and external badges of BentoML's own page, so that nothing loads from outside the service.
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
