# Renders one BOSH job template with Ruby's ERB through the subset of the bosh-template API that job templates use:
# p(name[, default]) (also p([names], default)), if_p(*names) { |*values| ... } with .else { ... }, and spec (name,
# index, id, az, deployment, address, ip, bootstrap, job.name, networks) as nested objects.
#
# Usage: ruby erb_render.rb CONTEXT_JSON TEMPLATE OUTPUT
#   CONTEXT_JSON: {"properties": {...the spec-declared properties, defaults applied...}, "spec": {...}}
# Exit 0 after writing OUTPUT; exit 1 with "<template>: <error>" on stderr (an unknown property names itself).
require "erb"
require "json"
require "ostruct"

class UnknownProperty < StandardError
end

class ActiveElseBlock
  def initialize(template)
    @template = template
  end

  def else
    yield
  end

  def else_if_p(*names, &block)
    @template.if_p(*names, &block)
  end
end

class InactiveElseBlock
  def else; end

  def else_if_p(*_names)
    InactiveElseBlock.new
  end
end

class TemplateContext
  attr_reader :spec

  def initialize(properties, spec)
    @properties = properties
    @spec = to_struct(spec)
  end

  def p(*args)
    names = Array(args[0])
    names.each do |name|
      value = lookup(name)
      return value unless value.nil?
    end
    return args[1] if args.length > 1
    raise UnknownProperty, "Can't find property '#{names.join("', or '")}'"
  end

  def if_p(*names)
    values = names.map { |name| lookup(name) }
    return ActiveElseBlock.new(self) if values.any?(&:nil?)
    yield(*values)
    InactiveElseBlock.new
  end

  def get_binding
    binding
  end

  private

  def lookup(name)
    name.to_s.split(".").reduce(@properties) do |node, part|
      return nil unless node.is_a?(Hash) && node.key?(part)
      node[part]
    end
  end

  def to_struct(value)
    case value
    when Hash then OpenStruct.new(value.transform_values { |item| to_struct(item) })
    when Array then value.map { |item| to_struct(item) }
    else value
    end
  end
end

context_path, template_path, output_path = ARGV
abort "usage: ruby erb_render.rb CONTEXT_JSON TEMPLATE OUTPUT" unless output_path
begin
  data = JSON.parse(File.read(context_path))
  context = TemplateContext.new(data.fetch("properties"), data.fetch("spec"))
  erb = ERB.new(File.read(template_path), trim_mode: "-")
  erb.filename = template_path
  result = erb.result(context.get_binding)
  File.write(output_path, result)
rescue StandardError, ScriptError => e
  warn "#{File.basename(template_path)}: #{e.message}"
  exit 1
end
